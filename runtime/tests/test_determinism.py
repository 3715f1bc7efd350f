import os
import random

import numpy as np
import pytest
import torch

from phasegate_runtime.determinism import configure_determinism, determinism_record, seed_everything


def test_seed_everything_resets_all_three_generators() -> None:
    seed_everything(7)
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(7)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_configure_and_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        configure_determinism(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        record = determinism_record(5)
        assert record.use_deterministic_algorithms is True
        assert record.cublas_workspace_config == ":4096:8"
        assert record.seed == 5
    finally:
        torch.use_deterministic_algorithms(before)
