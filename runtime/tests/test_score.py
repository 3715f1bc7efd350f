from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegate_runtime.checkpoint import record_digest, sha256_file
from phasegate_runtime.score import REFERENCE, ModelResult, load_model_result, score
from phasegate_runtime.spec import ParitySpec, SpecError

PARITY = ParitySpec(min_cosine=0.999999, max_l2=1e-5)
X = np.array([1.0, 0.0, 0.0], dtype=np.float32)
Y = np.array([0.6, 0.8, 0.0], dtype=np.float32)
OUT = ["a", "b", "c", "d"]


SITE = {"forward_passes": 4, "checked_passes": 4, "positions": 40, "max_abs_error": 0.0, "exact": True}
NUMERICS = {"decoder": "fast", "fused_kernels": False, "cuda_graphs": False, "grouped_eager": True}


def ids(outputs: list[str]) -> list[list[int]]:
    return [[ord(c) for c in text] for text in outputs]


def unit(
    method: str, repeat: int, classes: list[str], outputs: list[str] = OUT, ok: bool = True
) -> dict[str, Any]:
    counts = {k: classes.count(k) for k in ("coherent", "garbled", "normal")}
    return {
        "method": method, "repeat": repeat, "ok": ok, "classes": classes if ok else [],
        "counts": counts, "outputs": outputs if ok else [], "token_ids": ids(outputs) if ok else [],
        "changed_fraction": 1 - classes.count("normal") / len(classes) if ok else None,
        "site_check": {"reads": SITE, "steered": SITE} if ok else {},
        "direction_file": f"directions/{method}_r{repeat}.npy" if ok else None,
        "error": None if ok else "RuntimeError: boom",
    }  # fmt: skip


def native_of(u: dict[str, Any]) -> dict[str, Any]:
    return {**u, "direction_file": f"directions/native_{u['method']}_read.npy", "wall_s": 1.0}


def model(
    units: list[dict[str, Any]],
    dirs: dict[tuple[str, int], np.ndarray],
    methods: tuple[str, ...] = ("nnsight", "hooks", "pyvene"),
) -> ModelResult:
    natives = [native_of(next(u for u in units if u["method"] == m and u["repeat"] == 0)) for m in methods]
    result = {
        "repeats": 2, "methods": list(methods), "units": units, "native": natives,
        "baseline": {"site_check": {"unsteered": SITE}},
        "reference": {"ok": True, "error": None, "site_check": {"unsteered": SITE}},
        "steering": {"alpha": 3.0, "min_changed_fraction": 0.1}, "numerics": NUMERICS,
    }  # fmt: skip
    directions = {**dirs, REFERENCE: X, **{(f"native:{m}", 0): X for m in methods}}
    return ModelResult(result=result, directions=directions)


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
    assert g["failures"] == []
    assert g["steering"]["site_exact"] is True
    assert g["steering"]["visible"] is True
    assert g["native"]["all_identical"] is True
    assert all(m["within_thresholds"] for m in g["reference"]["methods"].values())
    assert s["closure"] == [
        {
            "model_key": "good", "methods_passing": "3/3", "parity_pass": True, "reference_ok": True,
            "site_exact": True, "native_identical": True, "steering_visible": True,
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


def test_a_method_that_did_not_steer_exactly_fails_with_the_reason() -> None:
    m = passing()
    almost = {**SITE, "max_abs_error": 0.0012, "exact": False}
    next(u for u in m.result["units"] if u["method"] == "pyvene" and u["repeat"] == 1)["site_check"][
        "steered"
    ] = almost
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["parity_pass"] is False
    assert s["steering"]["site_exact"] is False
    assert s["steering"]["max_abs_error"] == 0.0012
    assert s["failures"] == [
        "pyvene/r1: in its steered passes the residual after the site differed from raw + alpha x direction "
        "(max abs error 0.0012)"
    ]
    assert s["methods_passing"] == ["hooks", "nnsight"]


def test_a_changed_unsteered_residual_fails_every_method() -> None:
    m = passing()
    m.result["baseline"]["site_check"]["unsteered"] = {**SITE, "max_abs_error": 0.5, "exact": False}
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["parity_pass"] is False
    assert s["failures"][0].startswith("baseline: in its unsteered passes")
    assert s["methods_passing"] == []


def test_a_pass_that_never_reached_the_next_block_fails() -> None:
    m = passing()
    m.result["units"][0]["site_check"]["steered"] = {**SITE, "checked_passes": 3, "exact": False}
    s = score({"m": m}, PARITY)["models"]["m"]
    assert "hooks/r0: only 3 of 4 steered passes through the site reached the next block" in s["failures"]


def test_native_tokens_that_differ_fail_parity() -> None:
    m = passing()
    native = next(u for u in m.result["native"] if u["method"] == "nnsight")
    native["token_ids"] = [[1], *native["token_ids"][1:]]
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["native"]["methods"]["nnsight"]["tokens_identical"] is False
    assert s["native"]["all_identical"] is False
    assert s["parity_pass"] is False
    assert any(f.startswith("native/nnsight: token ids") and "1 eval prompt" in f for f in s["failures"])
    assert s["methods_passing"] == ["hooks", "pyvene"]


def test_a_direction_far_from_the_reference_fails_even_if_the_methods_agree() -> None:
    m = passing()
    m.directions[REFERENCE] = Y  # every method agrees with the others, none with the reference
    s = score({"m": m}, PARITY)["models"]["m"]
    assert all(p["within_thresholds"] for p in s["pairs"])
    assert s["reference"]["methods"]["hooks"]["cosine"] == pytest.approx(0.6, abs=1e-7)
    assert s["parity_pass"] is False
    assert s["methods_passing"] == []


def test_a_missing_reference_fails_parity() -> None:
    m = passing()
    m.result["reference"] = {"ok": False, "error": "RuntimeError: no hidden states", "site_check": {}}
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["reference"]["ok"] is False
    assert "the reference direction was not computed: RuntimeError: no hidden states" in s["failures"]


def test_no_visible_effect_is_said_not_failed() -> None:
    units = [unit(m, r, ["normal"] * 4) for m in ("hooks", "nnsight", "pyvene") for r in (0, 1)]
    m = model(units, {(x, r): X for x in ("hooks", "nnsight", "pyvene") for r in (0, 1)})
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["steering"]["changed_fraction_min"] == 0.0
    assert s["steering"]["visible"] is False
    assert s["parity_pass"] is True


def _write_result(tmp_path: Path, direction: np.ndarray) -> Path:
    (tmp_path / "directions").mkdir()
    np.save(tmp_path / "directions" / "hooks_r0.npy", direction)
    u = unit("hooks", 0, C4)
    u["files"] = {u["direction_file"]: sha256_file(tmp_path / u["direction_file"])}
    sealed = [{**r, "record_sha256": record_digest(r)} for r in (u, {"token_ids": ids(OUT)}, {"ok": False})]
    result = {
        "result_version": 2, "repeats": 1, "methods": ["hooks"], "units": [sealed[0]], "native": [],
        "baseline": sealed[1], "reference": sealed[2],
    }  # fmt: skip
    (tmp_path / "result.json").write_text(json.dumps(result))
    return tmp_path / "result.json"


def test_load_model_result_reads_directions(tmp_path: Path) -> None:
    loaded = load_model_result(_write_result(tmp_path, Y))
    assert np.array_equal(loaded.directions[("hooks", 0)], Y)
    assert loaded.integrity_problems == []


def test_a_direction_changed_after_it_was_written_is_an_integrity_problem(tmp_path: Path) -> None:
    path = _write_result(tmp_path, Y)
    np.save(tmp_path / "directions" / "hooks_r0.npy", -Y)
    loaded = load_model_result(path)
    assert loaded.integrity_problems == [
        "hooks/r0: directions/hooks_r0.npy changed since it was written (sha256 differs)"
    ]


def test_a_result_from_before_the_proof_is_refused(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"result_version": 1}))
    with pytest.raises(SpecError, match=r"results\.m: result_version 1 is not 2"):
        load_model_result(tmp_path / "result.json", "m")


def test_an_edited_unit_record_is_an_integrity_problem(tmp_path: Path) -> None:
    path = _write_result(tmp_path, Y)
    result = json.loads(path.read_text())
    result["baseline"]["token_ids"][0] = [1, 2, 3]
    path.write_text(json.dumps(result))
    assert load_model_result(path).integrity_problems == [
        "baseline: its record changed since it was written (sha256 differs)"
    ]


def test_a_deviating_hooks_does_not_pass_alone_the_agreeing_majority_does() -> None:
    m = passing()
    for u in m.result["units"]:
        if u["method"] == "hooks":
            u["token_ids"] = [[9], *u["token_ids"][1:]]
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["parity_pass"] is False
    assert s["methods_passing"] == ["nnsight", "pyvene"]


def test_one_method_proves_no_parity() -> None:
    units = [unit("hooks", r, C4) for r in (0, 1)]
    m = model(units, {("hooks", r): X for r in (0, 1)}, methods=("hooks",))
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["parity_pass"] is False
    assert s["failures"] == ["only 1 method was run: parity needs at least two to compare"]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        # Found by an adversarial probe: "repeats": 0 skipped every pair and reference check, and passed.
        (lambda r: r.update(repeats=0), "result.json: repeats is 0"),
        (
            lambda r: r.update(units=[u for u in r["units"] if u["method"] != "pyvene"]),
            "result.json: its units",
        ),
        (lambda r: r.update(units=r["units"] + r["units"][:1]), "result.json: its units"),
        (lambda r: r.update(native=r["native"][:2]), "result.json: its native cross-check units"),
    ],
)
def test_a_result_whose_claims_do_not_match_its_records_fails(edit: Any, reason: str) -> None:
    m = passing()
    edit(m.result)
    s = score({"m": m}, PARITY)["models"]["m"]
    assert s["parity_pass"] is False
    assert any(f.startswith(reason) for f in s["failures"]), s["failures"]
