from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegate_runtime.score import ModelResult, load_model_result, score
from phasegate_runtime.spec import ParitySpec

PARITY = ParitySpec(min_cosine=0.999999, max_l2=1e-5)
X = np.array([1.0, 0.0, 0.0], dtype=np.float32)
Y = np.array([0.6, 0.8, 0.0], dtype=np.float32)
OUT = ["a", "b", "c", "d"]


def unit(
    method: str, repeat: int, classes: list[str], outputs: list[str] = OUT, ok: bool = True
) -> dict[str, Any]:
    counts = {k: classes.count(k) for k in ("coherent", "garbled", "normal")}
    return {
        "method": method, "repeat": repeat, "ok": ok, "classes": classes if ok else [],
        "counts": counts, "outputs": outputs if ok else [],
        "direction_file": f"directions/{method}_r{repeat}.npy" if ok else None,
    }  # fmt: skip


def model(units: list[dict[str, Any]], dirs: dict[tuple[str, int], np.ndarray]) -> ModelResult:
    result = {"repeats": 2, "methods": ["nnsight", "hooks", "pyvene"], "units": units}
    return ModelResult(result=result, directions=dirs)


C4 = ["coherent"] * 4
C2N2 = ["coherent", "coherent", "normal", "normal"]


def passing() -> ModelResult:
    units = [unit(m, r, C4) for m in ("hooks", "nnsight", "pyvene") for r in (0, 1)]
    return model(units, {(m, r): X for m in ("hooks", "nnsight", "pyvene") for r in (0, 1)})


def failing() -> ModelResult:
    units = [
        unit("hooks", 0, C4), unit("hooks", 1, C2N2),
        unit("nnsight", 0, C4), unit("nnsight", 1, C2N2),
        unit("pyvene", 0, ["garbled"] * 4, outputs=["w", "x", "y", "z"]), unit("pyvene", 1, [], ok=False),
    ]  # fmt: skip
    dirs = {("hooks", 0): X, ("hooks", 1): X, ("nnsight", 0): X, ("nnsight", 1): Y, ("pyvene", 0): X}
    return model(units, dirs)


def test_passing_model() -> None:
    s = score({"good": passing()}, PARITY)
    g = s["models"]["good"]
    assert g["parity_pass"] is True
    assert g["outputs_identical"] is True
    assert [(p["a"], p["b"]) for p in g["pairs"]] == [
        ("hooks", "nnsight"),
        ("hooks", "pyvene"),
        ("nnsight", "pyvene"),
    ]
    assert all(p["cosine"] == 1.0 and p["l2"] == 0.0 for p in g["pairs"])
    assert g["methods"]["hooks"]["coherent"] == {"mean": 1.0, "std": 0.0}
    assert s["closure"] == [
        {
            "model_key": "good", "methods_passing": "3/3", "parity_pass": True,
            "coherent_range": {"min": 1.0, "max": 1.0},
            "garbled_range": {"min": 0.0, "max": 0.0},
            "normal_range": {"min": 0.0, "max": 0.0},
        }
    ]  # fmt: skip


def test_failing_model_exact_numbers() -> None:
    s = score({"bad": failing(), "good": passing()}, PARITY)
    b = s["models"]["bad"]
    hooks, nnsight, pyvene = (b["methods"][m] for m in ("hooks", "nnsight", "pyvene"))
    assert hooks["n_ok"] == 2
    assert pyvene["n_ok"] == 1
    assert hooks["coherent"] == {"mean": 0.75, "std": 0.25}  # population std of (1.0, 0.5)
    assert hooks["normal"] == {"mean": 0.25, "std": 0.25}
    assert pyvene["garbled"] == {"mean": 1.0, "std": 0.0}
    assert hooks["within_method_cosine_min"] == 1.0
    assert nnsight["within_method_cosine_min"] == pytest.approx(0.6, abs=1e-7)
    assert pyvene["within_method_cosine_min"] == 1.0  # a single ok repeat
    pairs = {(p["a"], p["b"]): p for p in b["pairs"]}
    hn = pairs[("hooks", "nnsight")]
    assert hn["cosine"] == pytest.approx(0.6, abs=1e-7)
    assert hn["l2"] == pytest.approx(math.sqrt(0.8), abs=1e-7)
    assert hn["within_thresholds"] is False
    assert hn["outputs_identical"] is True
    hp = pairs[("hooks", "pyvene")]
    assert hp["cosine"] == 1.0
    assert hp["l2"] == 0.0
    assert hp["outputs_identical"] is False
    assert b["outputs_identical"] is False
    assert b["parity_pass"] is False
    assert b["methods_passing"] == ["hooks"]
    assert [c["model_key"] for c in s["closure"]] == ["bad", "good"]
    bad = s["closure"][0]
    assert bad["methods_passing"] == "1/3"
    assert bad["coherent_range"] == {"min": 0.0, "max": 0.75}
    assert bad["garbled_range"] == {"min": 0.0, "max": 1.0}


def test_cosine_threshold_alone_fails_parity() -> None:
    m = passing()
    m.directions[("pyvene", 1)] = np.array([1.0, 1e-3, 0.0], dtype=np.float32)  # cos ~ 1 - 5e-7
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["outputs_identical"] is True
    assert s["parity_pass"] is False
    assert s["methods_passing"] == ["hooks", "nnsight"]


def test_load_model_result_reads_directions(tmp_path: Path) -> None:
    (tmp_path / "directions").mkdir()
    np.save(tmp_path / "directions" / "hooks_r0.npy", Y)
    result = {"repeats": 1, "methods": ["hooks"], "units": [unit("hooks", 0, C4)]}
    (tmp_path / "result.json").write_text(json.dumps(result))
    loaded = load_model_result(tmp_path / "result.json")
    assert np.array_equal(loaded.directions[("hooks", 0)], Y)
