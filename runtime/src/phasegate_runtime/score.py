"""Scoring per-model results into the parity tables of the Phase-1 closeout, as data.

:func:`score` is pure: it takes each model's parsed result.json and its direction arrays. Fractions are
class counts over the eval prompts of one unit; mean and *population* std are over the method's ok
repeats. Direction comparisons are in float64.

Per method: ``n_ok``, ``coherent``/``garbled``/``normal`` as ``{"mean", "std"}``,
``within_method_cosine_min`` (min over repeat pairs; 1.0 with one ok repeat; null with none).
Per unordered method pair (names sorted): ``cosine`` = min over repeats, ``l2`` = max over repeats, over
the repeats where both units are ok (null if none). ``outputs_identical``: every ok unit of the same repeat
produced the same texts across methods and no unit failed. ``parity_pass``: every pair within the parity
thresholds, every ``n_ok == repeats`` and ``outputs_identical``.
A method *passes* (``methods_passing``) when its ``n_ok == repeats`` and it agrees with the reference method
(pair within thresholds and identical outputs in every repeat). The reference is ``hooks`` (plain PyTorch,
the implementation with the fewest moving parts) or, without it, the first method by name; the reference
itself passes when its ``n_ok == repeats``. So one deviating library does not fail the others.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .spec import ParitySpec, ScoreSpec

LABELS = ("coherent", "garbled", "normal")
SCORE_VERSION = 1


@dataclass(frozen=True)
class ModelResult:
    result: dict[str, Any]
    directions: dict[tuple[str, int], np.ndarray]  # (method, repeat) -> float32 unit vector


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))


def _mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0))}


def score_model(model: ModelResult, parity: ParitySpec) -> dict[str, Any]:
    result = model.result
    repeats = int(result["repeats"])
    methods = sorted(result["methods"])
    units = {(u["method"], int(u["repeat"])): u for u in result["units"]}
    ok = {key for key, u in units.items() if u.get("ok")}

    per_method: dict[str, Any] = {}
    for m in methods:
        ok_repeats = [r for r in range(repeats) if (m, r) in ok]
        entry: dict[str, Any] = {"n_ok": len(ok_repeats), "repeats": repeats}
        for label in LABELS:
            entry[label] = _mean_std(
                [units[(m, r)]["counts"][label] / len(units[(m, r)]["classes"]) for r in ok_repeats]
            )
        cosines = [
            cosine(model.directions[(m, a)], model.directions[(m, b)])
            for a, b in itertools.combinations(ok_repeats, 2)
        ]
        entry["within_method_cosine_min"] = min(cosines) if cosines else (1.0 if ok_repeats else None)
        per_method[m] = entry

    pairs: list[dict[str, Any]] = []
    for a, b in itertools.combinations(methods, 2):
        shared = [r for r in range(repeats) if (a, r) in ok and (b, r) in ok]
        cos = [cosine(model.directions[(a, r)], model.directions[(b, r)]) for r in shared]
        dist = [l2(model.directions[(a, r)], model.directions[(b, r)]) for r in shared]
        same = all(units[(a, r)]["outputs"] == units[(b, r)]["outputs"] for r in shared)
        within = bool(shared) and min(cos) >= parity.min_cosine and max(dist) <= parity.max_l2
        pairs.append(
            {
                "a": a,
                "b": b,
                "cosine": min(cos) if cos else None,
                "l2": max(dist) if dist else None,
                "outputs_identical": same and len(shared) == repeats,
                "within_thresholds": within,
            }
        )

    all_ok = all(per_method[m]["n_ok"] == repeats for m in methods)
    outputs_identical = all_ok and all(p["outputs_identical"] for p in pairs)
    parity_pass = all_ok and outputs_identical and all(p["within_thresholds"] for p in pairs)

    reference = "hooks" if "hooks" in methods else methods[0]

    def method_passes(m: str) -> bool:
        if per_method[m]["n_ok"] != repeats:
            return False
        if m == reference:
            return True
        pair = next(p for p in pairs if {p["a"], p["b"]} == {m, reference})
        return bool(pair["within_thresholds"] and pair["outputs_identical"])

    return {
        "methods": per_method,
        "pairs": pairs,
        "outputs_identical": outputs_identical,
        "parity_pass": parity_pass,
        "reference_method": reference,
        "methods_passing": [m for m in methods if method_passes(m)],
    }


def _range(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    return {"min": min(present), "max": max(present)} if present else {"min": None, "max": None}


def score(models: Mapping[str, ModelResult], parity: ParitySpec) -> dict[str, Any]:
    scored = {key: score_model(models[key], parity) for key in sorted(models)}
    closure = []
    for key, s in scored.items():
        entry: dict[str, Any] = {
            "model_key": key,
            "methods_passing": f"{len(s['methods_passing'])}/{len(s['methods'])}",
            "parity_pass": s["parity_pass"],
        }
        for label in LABELS:
            entry[f"{label}_range"] = _range([m[label]["mean"] for m in s["methods"].values()])
        closure.append(entry)
    return {
        "score_version": SCORE_VERSION,
        "parity": {"min_cosine": parity.min_cosine, "max_l2": parity.max_l2},
        "models": scored,
        "closure": closure,
    }


def load_model_result(path: str | Path) -> ModelResult:
    path = Path(path)
    result = json.loads(path.read_text())
    directions = {
        (u["method"], int(u["repeat"])): np.load(path.parent / u["direction_file"], allow_pickle=False)
        for u in result["units"]
        if u.get("ok") and u.get("direction_file")
    }
    return ModelResult(result=result, directions=directions)


def score_from_spec(spec: ScoreSpec) -> dict[str, Any]:
    return score({key: load_model_result(p) for key, p in spec.results.items()}, spec.parity)
