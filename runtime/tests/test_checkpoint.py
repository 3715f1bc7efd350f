from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phasegate_runtime.checkpoint import atomic_write_json, atomic_write_npy, load_checkpoint
from phasegate_runtime.spec import SpecError


def test_atomic_json_and_npy(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a" / "x.json", {"k": 1})
    atomic_write_npy(tmp_path / "a" / "x.npy", np.array([1.5, 2.5]))
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": 1}
    arr = np.load(tmp_path / "a" / "x.npy")
    assert arr.dtype == np.float32
    assert arr.tolist() == [1.5, 2.5]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "x.npy"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"k": object()})
    assert list(tmp_path.iterdir()) == []


def test_load_checkpoint_hash_rules(tmp_path: Path) -> None:
    path = tmp_path / "u.json"
    assert load_checkpoint(path, "h1") is None
    path.write_text('{"spec_hash": "h1"')  # torn file from a non-atomic writer: treated as absent
    assert load_checkpoint(path, "h1") is None
    atomic_write_json(path, {"spec_hash": "h1", "v": 2})
    assert load_checkpoint(path, "h1") == {"spec_hash": "h1", "v": 2}
    with pytest.raises(SpecError, match="different spec"):
        load_checkpoint(path, "h2")
