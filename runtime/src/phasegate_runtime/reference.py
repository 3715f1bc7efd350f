"""The independent reference direction: the site read from ``output_hidden_states``, by code that shares
nothing with the three methods.

Each method reads the site through its own mechanism and the runner's shared batches. This module tokenises
the prompts itself, counts positions itself and takes block L's output from transformers' own
``hidden_states`` (entry L + 1; the last entry is normally replaced by the final norm's output, so that
replacement is switched off for the read: ``tie_last_hidden_states``). The mean difference is formed in
float64 with numpy. Batches have the protocol's batch size and left padding, as the methods', so that in low
precision the reference sees the very same arithmetic per row; padding cannot reach a real token
(masked keys).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ReferenceDirection:
    unit: np.ndarray  # float32 [hidden], L2 norm 1
    norm_before_normalisation: float


_CAPTURE_HOOK = "output_capturing_hook"
_CAPTURE_FLAG = "_output_capturing_hooks_installed"


def _restore_capturing_hooks(model: PreTrainedModel) -> None:
    """transformers records ``hidden_states`` with forward hooks it installs once per module and marks as
    installed; pyvene removes every forward hook on the model at each call, and the mark stays, so hidden
    states would come back empty. Where the hooks are gone, the mark is cleared and transformers reinstalls
    them on the next forward."""
    hooked = any(
        getattr(hook, "__name__", "") == _CAPTURE_HOOK
        for module in model.modules()
        for hook in module._forward_hooks.values()
    )
    if hooked:
        return
    for module in model.modules():
        if getattr(module, _CAPTURE_FLAG, False):
            setattr(module, _CAPTURE_FLAG, False)


@contextmanager
def _untied_last_hidden_state(model: PreTrainedModel) -> Iterator[None]:
    config = model.config
    had = "tie_last_hidden_states" in config.__dict__
    previous = config.__dict__.get("tie_last_hidden_states")
    config.tie_last_hidden_states = False
    try:
        yield
    finally:
        if had:
            config.tie_last_hidden_states = previous
        else:
            del config.tie_last_hidden_states


def _site_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    layer: int,
    position: int,
    batch_size: int,
) -> np.ndarray:
    n_layers = int(model.config.get_text_config(decoder=True).num_hidden_layers)
    device = next(model.parameters()).device
    rows: list[np.ndarray] = []
    _restore_capturing_hooks(model)
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode(), _untied_last_hidden_state(model):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        hidden = out.hidden_states
        if hidden is None or len(hidden) != n_layers + 1:
            raise RuntimeError(
                f"output_hidden_states returned {0 if hidden is None else len(hidden)} entries, expected "
                f"{n_layers + 1} (were transformers' output-capturing hooks removed?)"
            )
        rows.append(hidden[layer + 1][:, position, :].float().cpu().numpy())
    return np.concatenate(rows).astype(np.float64)


def reference_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[str],
    harmless: Sequence[str],
    layer: int,
    position: int,
    batch_size: int,
) -> ReferenceDirection:
    diff = _site_rows(model, tokenizer, harmful, layer, position, batch_size).mean(axis=0) - _site_rows(
        model, tokenizer, harmless, layer, position, batch_size
    ).mean(axis=0)
    norm = float(np.linalg.norm(diff))
    if not norm > 0.0:
        raise ValueError("harmful and harmless means coincide: the reference direction is undefined")
    return ReferenceDirection(unit=(diff / norm).astype(np.float32), norm_before_normalisation=norm)
