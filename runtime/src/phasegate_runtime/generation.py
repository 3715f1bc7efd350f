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


def greedy_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> GenerationConfig:
    """A fresh config, so a checkpoint's own sampling defaults (e.g. Qwen2.5-Instruct's temperature,
    top_p, top_k) cannot leak into what must be plain greedy decoding."""
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


@torch.inference_mode()
def generate_ids(model: PreTrainedModel, batch: Batch, config: GenerationConfig) -> torch.Tensor:
    out = model.generate(**batch.model_inputs(), generation_config=config)  # type: ignore[operator]
    return torch.as_tensor(out)


def new_token_ids(ids: torch.Tensor, prompt_len: int, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Per row, the generated ids up to (not including) the first EOS; padding after EOS is dropped."""
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    rows = []
    for row in ids[:, prompt_len:].tolist():
        cut = next((i for i, tok in enumerate(row) if tok in eos_ids), len(row))
        rows.append(row[:cut])
    return rows


def decode(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]]) -> list[str]:
    return [str(tokenizer.decode(row, skip_special_tokens=True)) for row in rows]
