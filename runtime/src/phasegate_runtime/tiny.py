"""Tiny random-weight causal LMs built from a seed, saved so plain transformers can load them back.

Tests and demos need real decoder architectures (qwen2, gemma2, llama) without a hub download. A model is
built with ``torch.manual_seed(seed)`` then ``from_config`` in float32, so the same seed gives bit-identical
weights, and written with ``save_pretrained`` to ``cache_dir/tiny-<arch>-s<seed>/``. The tokenizer is a
byte-level BPE with no merges (every byte is a token), built offline with ``tokenizers``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .spec import TINY_ARCHS, TinyArch

# torch, tokenizers and transformers are imported where a model is built: finding one already saved (every
# preflight and run after the first) costs no import.
if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
_SPECIALS = (PAD, EOS, BOS)

# Small enough that the whole test suite runs on 2 CPU cores in well under a minute per architecture.
_COMMON: dict[str, object] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "vocab_size": 272,  # 256 bytes + 3 specials, rounded up
    "tie_word_embeddings": False,
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens then pad/eos/bos, left padding for batched generation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for token in _SPECIALS:
        vocab[token] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(list(_SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD, eos_token=EOS, bos_token=BOS, padding_side="left"
    )
    return tok


def tiny_config(arch: TinyArch, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    from transformers import AutoConfig

    extra: dict[str, object] = {}
    if arch == "gemma2":
        # Keep gemma2's soft-capping and sliding window switched on so the tiny model exercises the same
        # code paths as the real one; the window is shorter than a prompt+generation to matter.
        extra = {"sliding_window": 16, "query_pre_attn_scalar": 16}
    return AutoConfig.for_model(
        arch,
        **_COMMON,
        **extra,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def tiny_dir(cache_dir: str | os.PathLike[str], arch: TinyArch, seed: int) -> Path:
    return Path(cache_dir) / f"tiny-{arch}-s{seed}"


def ensure_tiny_model(cache_dir: str | os.PathLike[str], arch: TinyArch, seed: int) -> Path:
    """Build and save the tiny model unless already present; returns its directory.

    Written into a temporary sibling then renamed, so a concurrent or killed writer never leaves a
    half-saved directory that a later run would take as complete.
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {TINY_ARCHS}")
    target = tiny_dir(cache_dir, arch, seed)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(arch, tokenizer)
    # The global RNG is borrowed for construction only, so callers' seeding is left undisturbed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another writer won the race; its copy is identical by construction.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
