"""Batching, greedy generation config and the one plain ``generate`` call.

Every method sees the same left-padded batches (:func:`make_batches`). :func:`generate_ids` is the only place
the runtime calls ``model.generate`` itself; nnsight and pyvene call ``model.generate`` from inside their own
steering contexts. :func:`.decode.install_fast_generate` (run by ``load_model``) replaces that method on the
loaded model with the static-cache greedy decoder, so every method and the baseline decode with the very same
kernels (method parity) and, on CUDA, through a captured CUDA graph (speed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Batch:
    prompts: tuple[str, ...]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[1])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def read_inputs(self, explicit_positions: bool) -> dict[str, torch.Tensor]:
        """What an activation read passes: :meth:`forward_inputs`, or (the native cross-check, reading as
        each library is normally called) the plain model inputs, positions left to the library."""
        return self.forward_inputs() if explicit_positions else self.model_inputs()

    def forward_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs of a plain forward pass (the activation reads), with explicit ``position_ids``.

        Left padding would otherwise shift a short prompt's positions in some libraries and not in others
        (nnsight derives positions from the mask, a plain call counts from the first pad): equal in exact
        arithmetic under RoPE, but not in bf16, so the methods' directions drifted apart on GPU. Every
        method now reads the site with the positions generation uses (:func:`prompt_positions`).
        """
        return {**self.model_inputs(), "position_ids": prompt_positions(self.attention_mask)}


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, 0 at its first real token; padding gets 1 (both as ``generate`` counts them)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def make_batches(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int,
    device: torch.device,
) -> list[Batch]:
    batches = []
    for start in range(0, len(prompts), batch_size):
        chunk = tuple(prompts[start : start + batch_size])
        enc = tokenizer(list(chunk), return_tensors="pt", padding=True)
        batches.append(Batch(chunk, enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return batches


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the checkpoint's
    ``generation_config.eos_token_id`` (Qwen2.5-Instruct and gemma-2-9b-it list further
    end-of-turn tokens there), sorted, without repeats."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if source is None:
            continue
        ids.update(int(i) for i in (source if isinstance(source, list) else [source]))
    return sorted(ids)


def greedy_config(
    tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, stop_ids: list[int]
) -> GenerationConfig:
    """A fresh config, so a checkpoint's own sampling defaults (e.g. Qwen2.5-Instruct's temperature,
    top_p, top_k) cannot leak into what must be plain greedy decoding. Its stop tokens are ``stop_ids``."""
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(stop_ids) if stop_ids else None,
        bos_token_id=tokenizer.bos_token_id,
    )


@torch.inference_mode()
def generate_ids(model: PreTrainedModel, batch: Batch, config: GenerationConfig) -> torch.Tensor:
    out = model.generate(**batch.model_inputs(), generation_config=config)  # type: ignore[operator]
    return torch.as_tensor(out)


def new_token_ids(ids: torch.Tensor, prompt_len: int, stop_ids: list[int]) -> list[list[int]]:
    """Per row, the generated ids up to (not including) the first stop token; padding after it is dropped."""
    stops = set(stop_ids)
    rows = []
    for row in ids[:, prompt_len:].tolist():
        cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        rows.append(row[:cut])
    return rows


def decode(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]]) -> list[str]:
    return [str(tokenizer.decode(row, skip_special_tokens=True)) for row in rows]
