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

from phasegate_runtime.modal_job import VolumePaths, claim_key, run_in_container, run_model_body

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


def test_a_finished_run_is_reused_without_loading_anything(
    both: tuple[Path, dict[str, object], Path],
) -> None:
    """The durable done marker: a late retry or an orphan of a finished run returns its result at once. The
    "python" given cannot run anything, so the only way to succeed is not to run."""
    _, remote, volume = both
    spec = json.loads((volume / "runs" / "demo-ab12cd34" / "tiny-qwen" / "spec.json").read_text())
    spec["cache_dir"] = "/elsewhere"  # the container rewrites it: the marker covers the spec as run
    again = run_model_body(spec, VolumePaths(volume), python="/bin/false")
    assert again["status"] == "ok"
    assert again["reused"] is True
    assert again["files"] == remote["files"]
    changed = {**spec, "repeats": 2}  # another spec is not the finished one: it runs (and fails here)
    assert run_model_body(changed, VolumePaths(volume), python="/bin/false")["status"] == "failure"


class _Volume:
    def __init__(self, commit_error: Exception | None = None) -> None:
        self.commit_error, self.commits, self.reloads = commit_error, 0, 0

    def reload(self) -> None:
        self.reloads += 1

    def commit(self) -> None:
        self.commits += 1
        if self.commit_error is not None:
            raise self.commit_error


def test_a_commit_conflict_after_the_run_does_not_throw_the_success_away(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from phasegate_runtime.modal_fake import FakeModal

    store = FakeModal().launches
    spec = {"phase_id": "p", "model_key": "m"}
    volume = _Volume(commit_error=RuntimeError("commit conflict"))
    result = run_in_container(
        spec,
        call_id="fc-1",
        task_id="ta-1",
        claims=store,
        volume=volume,
        paths=VolumePaths(Path("/x")),
        is_live=lambda _: True,
        body=lambda s, p: {"status": "ok", "files": {"result.json": b"{}"}},
    )
    assert result["status"] == "ok"
    assert volume.commits == 1
    assert "volume commit failed after the run" in capsys.readouterr().err
    assert store.get(claim_key("p", "m")) is None  # released all the same


def test_a_timeout_error_in_the_container_is_a_failure_and_a_second_call_is_a_duplicate() -> None:
    from phasegate_runtime.modal_fake import FakeModal

    store = FakeModal().launches
    spec = {"phase_id": "p", "model_key": "m"}

    def slow(s: dict[str, object], p: VolumePaths) -> dict[str, object]:
        # While this call runs, a second call for the same (phase, model) starts: it must not run.
        other = run_in_container(
            spec,
            call_id="fc-2",
            task_id="ta-2",
            claims=store,
            volume=_Volume(),
            paths=p,
            is_live=lambda _: True,
            body=lambda *_: {"status": "ok"},
        )
        assert other == {
            "status": "duplicate",
            "owner": "fc-1",
            "gpu_seconds": 0.0,
            "files": {},
            "message": None,
        }
        raise TimeoutError("the hub timed out")

    result = run_in_container(
        spec,
        call_id="fc-1",
        task_id="ta-1",
        claims=store,
        volume=_Volume(),
        paths=VolumePaths(Path("/x")),
        is_live=lambda _: True,
        body=slow,
    )
    assert result["status"] == "failure"
    assert "TimeoutError in the container" in str(result["message"])
