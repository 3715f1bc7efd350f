"""The process contract: events, exit codes, signals and resume, through the real entry point."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from phasegate_runtime.cli import main

from _data import run_spec_dict, write_json


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _spawn(spec: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "phasegate_runtime", "run", "--spec", str(spec), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _run_until_first_finish(spec: Path, out: Path, signum: int) -> tuple[int, list[dict[str, Any]]]:
    """Start a run, send ``signum`` right after its first unit_finished event, collect all events."""
    proc = _spawn(spec, out)
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if event["event"] == "unit_finished":
            proc.send_signal(signum)
            break
    events += _events(proc.stdout.read())
    return proc.wait(timeout=60), events


def _names(events: list[dict[str, Any]], kind: str) -> list[str]:
    return [e["unit"] for e in events if e["event"] == kind]


def test_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = run_spec_dict(tmp_path)
    spec["generation"]["batch_size"] = 0
    path = write_json(tmp_path / "spec.json", spec)
    proc = subprocess.run(
        [sys.executable, "-m", "phasegate_runtime", "run", "--spec", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "invalid spec: generation.batch_size: must be >= 1" in proc.stderr
    last = _events(proc.stdout)[-1]
    assert last["event"] == "error"
    assert last["kind"] == "invalid_spec"
    assert "generation.batch_size" in last["message"]


def test_layer_beyond_model_is_invalid_spec(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = run_spec_dict(cache_dir, site={"layer": 3, "position": -1})
    code = main(["run", "--spec", str(write_json(tmp_path / "s.json", spec)), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2
    assert "invalid spec: site.layer: must be < num_hidden_layers (3)" in captured.err
    assert _events(captured.out)[-1]["kind"] == "invalid_spec"


def test_position_reaching_before_prompt_is_invalid(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = run_spec_dict(cache_dir, site={"layer": 1, "position": -100})
    code = main(["run", "--spec", str(write_json(tmp_path / "s.json", spec)), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "prompts.harmful[0]" in capsys.readouterr().err


def test_unknown_args_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--spec", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert main(["frobnicate"]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["score", "--spec", str(tmp_path / "bad.json"), "--out", str(tmp_path / "s.json")]) == 2
    out = _events(capsys.readouterr().out)
    assert [e["kind"] for e in out] == ["invalid_spec"] * 3


def test_other_failures_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "results": {"m": str(tmp_path / "nowhere" / "result.json")},
        "parity": {"min_cosine": 0.9, "max_l2": 1.0},
    }
    code = main(
        ["score", "--spec", str(write_json(tmp_path / "s.json", spec)), "--out", str(tmp_path / "o.json")]
    )
    assert code == 1
    assert _events(capsys.readouterr().out)[-1]["kind"] == "failure"


def test_killed_runs_resume_without_recomputing(tmp_path: Path, cache_dir: Path) -> None:
    spec = write_json(
        tmp_path / "spec.json", run_spec_dict(cache_dir, generation={"max_new_tokens": 12, "batch_size": 2})
    )
    out = tmp_path / "run"

    code1, ev1 = _run_until_first_finish(spec, out, signal.SIGTERM)
    assert code1 == 143, ev1
    done1 = set(_names(ev1, "unit_finished"))
    assert done1
    assert "baseline" in done1
    assert ev1[-1] == {"event": "error", "kind": "interrupted", "message": "interrupted by SIGTERM"}
    assert not list(out.rglob(".*"))  # no temp files left by the interrupted write

    done = done1
    for signum, expected in ((signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)):
        code, ev = _run_until_first_finish(spec, out, signum)
        assert code == expected, ev
        assert done <= set(_names(ev, "unit_skipped"))
        assert not done & set(_names(ev, "unit_started"))
        newly = set(_names(ev, "unit_finished"))
        assert newly
        assert not newly & done
        done = done | newly
    done2 = done

    proc = _spawn(spec, out)
    stdout, _ = proc.communicate(timeout=300)
    ev3 = _events(stdout)
    assert proc.returncode == 0
    assert set(_names(ev3, "unit_skipped")) == done2
    assert not done2 & set(_names(ev3, "unit_started"))
    assert ev3[-1]["event"] == "run_finished"
    assert ev3[-1]["done"] == ev3[-1]["total"] == 11  # baseline, reference, 3 methods x 2 repeats, 3 native
    result = json.loads((out / "result.json").read_text())
    assert len(result["units"]) == 6
    assert all(u["ok"] for u in result["units"])


def test_run_then_score_end_to_end(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_path = write_json(tmp_path / "spec.json", run_spec_dict(cache_dir))
    assert main(["run", "--spec", str(spec_path), "--out", str(tmp_path / "run")]) == 0
    events = _events(capsys.readouterr().out)
    assert [e["event"] for e in events][:3] == ["model_loaded", "unit_started", "unit_finished"]
    assert events[-1] == {
        "event": "run_finished",
        "result": str(tmp_path / "run" / "result.json"),
        "done": 11,
        "total": 11,
    }
    score_spec = {
        "results": {"tiny-qwen": str(tmp_path / "run" / "result.json")},
        "parity": {"min_cosine": 0.999999, "max_l2": 1e-5},
    }
    assert (
        main(
            [
                "score",
                "--spec",
                str(write_json(tmp_path / "ss.json", score_spec)),
                "--out",
                str(tmp_path / "score.json"),
            ]
        )
        == 0
    )
    scored = json.loads((tmp_path / "score.json").read_text())
    assert scored["models"]["tiny-qwen"]["parity_pass"] is True
    assert scored["closure"][0]["methods_passing"] == "3/3"


def test_tiny_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny", "--arch", "llama", "--seed", "3", "--out", str(tmp_path)]) == 0
    event = _events(capsys.readouterr().out)[-1]
    assert event == {
        "event": "tiny_saved",
        "path": str(tmp_path / "tiny-llama-s3"),
        "arch": "llama",
        "seed": 3,
    }
    assert (tmp_path / "tiny-llama-s3" / "config.json").is_file()
