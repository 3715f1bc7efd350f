"""Seeding and deterministic-algorithm settings, and a record of them for result.json."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class DeterminismRecord:
    use_deterministic_algorithms: bool
    cublas_workspace_config: str | None
    cudnn_benchmark: bool
    seed: int


def configure_determinism(deterministic: bool) -> None:
    """Must run before CUDA initialises: cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, at handle creation."""
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    """Reseeded before every unit, so a unit's result does not depend on which units ran before it
    in this process (a resumed run skips some)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def determinism_record(seed: int) -> DeterminismRecord:
    return DeterminismRecord(
        use_deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        seed=seed,
    )


@contextmanager
def without_nan_fill() -> Iterator[None]:
    """Deterministic mode without one of its costs, where it buys nothing: the decoder's passes and the fast
    units' activation reads.

    ``torch.utils.deterministic.fill_uninitialized_memory`` fills every new ``torch.empty`` with NaN: hundreds
    of fill kernels per forward pass, and a full extra write of every repeated KV head in eager attention. It
    makes a read of uninitialised memory deterministic; these passes read none, so their outputs cannot depend
    on it. Deterministic algorithms stay on. Repeats and methods are still compared for identical outputs
    (every run's scoring, the tests, ``bench/gpu_protocol.py``), which a pass reading such memory would fail.
    The decoder lifts one more cost, the sort-based cache write (``decode._StaticLayer``).
    """
    import torch.utils.deterministic as det

    previous = det.fill_uninitialized_memory  # type: ignore[attr-defined]
    det.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        det.fill_uninitialized_memory = previous  # type: ignore[attr-defined]
