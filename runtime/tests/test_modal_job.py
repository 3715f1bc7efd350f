"""The Modal GPU function's body, run here on a tiny model: it must return what the local backend produces
for the same spec (the local backend is `python -m phasegate_runtime run`, as activities/backends/local.ts
runs it)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phasegate_runtime.modal_job import VolumePaths, run_model_body

from _data import EVAL, run_spec_dict

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _local_backend_run(spec: dict[str, object], tmp: Path) -> Path:
    out = tmp / "local-out"
    spec_path = tmp / "local-spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "phasegate_runtime", "run", "--spec", str(spec_path), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": SRC})
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], Path]:
    tmp = tmp_path_factory.mktemp("modal-body")
    spec = run_spec_dict(tmp / "local-cache", methods=["hooks"], repeats=1)
    # Small enough for two full runs in a few seconds each: the equality is what matters, not the size.
    spec["prompts"]["eval"] = EVAL[:2]
    spec["generation"] = {"max_new_tokens": 4, "batch_size": 2}
    local = _local_backend_run(spec, tmp)
    remote = run_model_body(spec, VolumePaths(tmp / "volume"))
    return local, remote, tmp / "volume"


def test_body_returns_what_the_local_backend_returns(both: tuple[Path, dict[str, object], Path]) -> None:
    local, remote, _ = both
    assert remote["status"] == "ok", remote["message"]
    files = remote["files"]
    assert isinstance(files, dict)
    mine, theirs = json.loads(files["result.json"]), json.loads((local / "result.json").read_text())
    assert mine["baseline"]["outputs"] == theirs["baseline"]["outputs"]
    for a, b in zip(mine["units"], theirs["units"], strict=True):
        for field in ("method", "repeat", "ok", "outputs", "classes", "counts", "direction_file"):
            assert a[field] == b[field], field
        assert np.array_equal(
            np.load(local / b["direction_file"]), np.load(io.BytesIO(files[a["direction_file"]]))
        )
    assert sorted(files) == sorted(
        str(p.relative_to(local))
        for g in ("result.json", "units/*.json", "directions/*.npy")
        for p in local.glob(g)
    )


def test_body_measures_seconds_and_runs_on_the_volume(both: tuple[Path, dict[str, object], Path]) -> None:
    _, remote, volume = both
    assert isinstance(remote["gpu_seconds"], float)
    assert remote["gpu_seconds"] > 0
    run_dir = volume / "runs" / "demo-ab12cd34" / "tiny-qwen"
    assert (run_dir / "result.json").is_file()
    assert json.loads((run_dir / "spec.json").read_text())["cache_dir"] == str(volume / "models")
    assert (volume / "models" / "tiny-qwen2-s0").is_dir()


def test_body_reports_an_invalid_spec_without_raising(tmp_path: Path) -> None:
    spec = run_spec_dict(tmp_path, methods=["hooks", "bogus"])
    result = run_model_body(spec, VolumePaths(tmp_path / "volume"))
    assert result["status"] == "invalid_spec"
    assert result["exit_code"] == 2
    assert "methods[1]" in str(result["message"])
    assert result["files"] == {}
