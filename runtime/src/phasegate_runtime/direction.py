"""The steering direction: mean site activation over harmful prompts minus over harmless, L2-normalised.

Computed in float32 whatever the model dtype. The per-row activations come from the method under test;
only this arithmetic is shared, so each method's direction depends on its own reads alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backend import Backend
from .generation import Batch


@dataclass(frozen=True)
class Direction:
    unit: np.ndarray  # float32 [hidden], L2 norm 1
    norm_before_normalisation: float


def mean_activation(
    backend: Backend, batches: list[Batch], layer: int, position: int, explicit_positions: bool = True
) -> torch.Tensor:
    total: torch.Tensor | None = None
    count = 0
    for batch in batches:
        acts = backend.activations(batch, layer, position, explicit_positions).to(torch.float32)
        part = acts.sum(dim=0)
        total = part if total is None else total + part
        count += acts.shape[0]
    if total is None:
        raise ValueError("no prompts")
    return total / count


def compute_direction(
    backend: Backend,
    harmful: list[Batch],
    harmless: list[Batch],
    layer: int,
    position: int,
    explicit_positions: bool = True,
) -> Direction:
    diff = mean_activation(backend, harmful, layer, position, explicit_positions) - mean_activation(
        backend, harmless, layer, position, explicit_positions
    )
    norm = float(torch.linalg.vector_norm(diff))
    if not norm > 0.0:
        raise ValueError("harmful and harmless means coincide: direction is undefined")
    return Direction(unit=(diff / norm).numpy().astype(np.float32), norm_before_normalisation=norm)


def steering_delta(unit: np.ndarray, alpha: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """alpha * the unit direction, formed in float32 and cast once: every method adds the identical tensor.

    Refused (ValueError, naming ``steering.alpha``) when the cast loses the direction: an element that
    underflows to 0 or overflows to infinity. A delta of zeros would make a method that never steers
    indistinguishable from one that does (the site check compares the residual with raw + delta), which an
    adversarial probe showed with alpha = 1e-46."""
    source = torch.from_numpy(np.asarray(unit, dtype=np.float32))
    delta = (alpha * source).to(dtype=dtype)
    lost = int(((delta == 0) & (source != 0)).sum())
    if lost or not bool(torch.isfinite(delta).all()):
        what = f"{lost} of its {source.numel()} elements underflow to 0" if lost else "it overflows"
        raise ValueError(f"steering.alpha: {alpha:g} x the direction does not fit {dtype}: {what}")
    return delta.to(device=device)
