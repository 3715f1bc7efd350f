from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from phasegate_runtime.checkpoint import sha256_file
from phasegate_runtime.events import EventStream
from phasegate_runtime.runner import run
from phasegate_runtime.spec import SpecError, parse_run_spec

from _data import EVAL, run_spec_dict


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("run")
    spec = parse_run_spec(run_spec_dict(cache_dir, methods=["hooks", "pyvene"], model={
        "id": "tiny:gemma2", "revision": None, "dtype": "float32", "device": "cpu",
        "attn_implementation": None, "tiny_seed": 0}))  # fmt: skip
    run(spec, out, EventStream(io.StringIO()))
    return out, json.loads((out / "result.json").read_text())


def test_result_layout(finished: tuple[Path, dict[str, object]]) -> None:
    out, result = finished
    assert result["model"] == {
        "id": "tiny:gemma2", "resolved_path": result["model"]["resolved_path"],  # type: ignore[index]
        "revision": None, "dtype": "float32", "device": "cpu", "attn_implementation": "eager",
        "num_layers": 3, "hidden_size": 64,
    }  # fmt: skip
    units = result["units"]
    assert isinstance(units, list)
    assert [(u["method"], u["repeat"]) for u in units] == [
        ("hooks", 0),
        ("hooks", 1),
        ("pyvene", 0),
        ("pyvene", 1),
    ]
    for u in units:
        assert u["ok"]
        assert u["gpu_s"] is None
        assert u["wall_s"] > 0
        assert len(u["outputs"]) == len(u["classes"]) == len(u["token_ids"]) == len(EVAL)
        assert set(u["site_check"]) == {"reads", "steered"}
        assert u["site_check"]["steered"]["exact"] is True
        assert u["files"] == {u["direction_file"]: sha256_file(out / u["direction_file"])}
        assert sum(u["counts"].values()) == len(EVAL)
        vec = np.load(out / u["direction_file"])
        assert vec.dtype == np.float32
        assert abs(float(np.linalg.norm(vec)) - 1) < 1e-6
        assert u["direction_norm_before_normalisation"] > 0
    env = result["environment"]
    assert isinstance(env, dict)
    assert env["determinism"]["use_deterministic_algorithms"] is True
    assert env["determinism"]["cublas_workspace_config"] == ":4096:8"
    assert set(env) >= {"python", "torch", "transformers", "nnsight", "pyvene", "numpy", "device_name"}
    assert len(result["baseline"]["outputs"]) == len(EVAL)  # type: ignore[index]
    assert len(result["baseline"]["token_ids"]) == len(EVAL)  # type: ignore[index]
    assert result["numerics"] == {  # as the spec set them, resolved on this CPU
        "decoder": "fast", "fused_kernels": False, "fused_mode": "off", "cuda_graphs": False,
        "grouped_eager": True,
    }  # fmt: skip
    assert result["stop_token_ids"] == [257]  # the tiny tokenizer's <eos>
    assert [u["method"] for u in result["native"]] == ["hooks", "pyvene"]  # type: ignore[union-attr]
    assert result["reference"]["ok"] is True  # type: ignore[index]


def test_repeats_and_methods_reproduce(finished: tuple[Path, dict[str, object]]) -> None:
    out, result = finished
    units = result["units"]
    assert isinstance(units, list)
    assert len({json.dumps(u["token_ids"]) for u in units}) == 1
    vecs = [np.load(out / u["direction_file"]) for u in units]
    assert all(np.linalg.norm(v - vecs[0]) <= 1e-6 for v in vecs)


def test_rerun_skips_everything(finished: tuple[Path, dict[str, object]], cache_dir: Path) -> None:
    out, result = finished
    spec = parse_run_spec(run_spec_dict(cache_dir, methods=["hooks", "pyvene"], model={
        "id": "tiny:gemma2", "revision": None, "dtype": "float32", "device": "cpu",
        "attn_implementation": None, "tiny_seed": 0}))  # fmt: skip
    stream = io.StringIO()
    run(spec, out, EventStream(stream))
    kinds = [e["event"] for e in _events(stream)]
    # baseline, reference, 2 methods x 2 repeats, 2 native cross-checks
    assert kinds == ["model_loaded"] + ["unit_skipped"] * 8 + ["run_finished"]
    assert json.loads((out / "result.json").read_text())["units"] == result["units"]


def test_other_spec_in_same_dir_is_refused(finished: tuple[Path, dict[str, object]], cache_dir: Path) -> None:
    out, _ = finished
    spec = parse_run_spec(run_spec_dict(cache_dir, seed=99))
    with pytest.raises(SpecError, match="different spec"):
        run(spec, out, EventStream(io.StringIO()))


def test_numerics_come_from_the_spec_and_an_environment_variable_only_refuses(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PHASEGATE_DECODE etc. used to switch the decoder outside the spec hash; now they can only refuse."""
    spec = parse_run_spec(run_spec_dict(cache_dir))
    monkeypatch.setenv("PHASEGATE_DECODE", "hf")
    with pytest.raises(SpecError, match="PHASEGATE_DECODE") as info:
        run(spec, tmp_path, EventStream(io.StringIO()))
    assert info.value.path == "numerics.decoder"
    assert not (tmp_path / "units").exists()  # refused before anything ran
    monkeypatch.setenv("PHASEGATE_DECODE", "fast")  # agreeing with the spec is fine
    numerics = {"decoder": "hf", "fused_kernels": "auto", "cuda_graphs": True, "grouped_eager": True}
    other = parse_run_spec(run_spec_dict(cache_dir, numerics=numerics))
    assert other.hash() != spec.hash()  # a numerics switch is part of what keys the checkpoints
