"""Seeding and deterministic-algorithm settings, and a record of them for result.json."""

from __future__ import annotations

import os
import random
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
