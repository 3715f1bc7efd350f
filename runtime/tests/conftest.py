"""Shared fixtures: one tiny model per architecture per session, saved under a session tmp cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from phasegate_runtime.models import LoadedModel, load_model
from phasegate_runtime.spec import ModelSpec


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


_loaded: dict[str, LoadedModel] = {}


@pytest.fixture(scope="session")
def load_tiny(cache_dir: Path) -> Any:
    def load(arch: str) -> LoadedModel:
        if arch not in _loaded:
            spec = ModelSpec(
                id=f"tiny:{arch}", revision=None, dtype="float32", device="cpu",
                attn_implementation=None, tiny_seed=0,
            )  # fmt: skip
            _loaded[arch] = load_model(spec, str(cache_dir))
        return _loaded[arch]

    return load
