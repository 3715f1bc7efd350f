"""Scoring per-model results into the parity tables of the Phase-1 closeout, with the proof they rest on.

:func:`score` is pure: it takes each model's parsed result.json and its direction arrays. Fractions are
class counts over the eval prompts of one unit; mean and *population* std are over the method's ok
repeats (the repeats are deterministic replicas, so std 0 is expected by construction). Direction
comparisons are in float64.

Per method: ``n_ok``, ``coherent``/``garbled``/``normal``/``changed_fraction`` as ``{"mean", "std"}``,
``within_method_cosine_min`` (min over repeat pairs; 1.0 with one ok repeat; null with none).
Per unordered method pair (names sorted): ``cosine`` = min over repeats, ``l2`` = max over repeats, over
the repeats where both units are ok (null if none); ``outputs_identical``: the same token ids in every repeat;
``texts_identical``: the same decoded texts (for people; ids decide).

The proof, per model:

* ``reference``: each method's directions against the independent reference (:mod:`.reference`), worst over
  repeats, within the parity thresholds.
* ``steering``: the site observer's checks (:mod:`.site_check`): in every steered pass of every unit (fast and
  native) the residual after block L was exactly ``raw + alpha x direction`` at every position
  (``site_exact``), and in every unsteered pass (baseline, reference, activation reads) it was unchanged;
  block L's own output was bit for bit the baseline's in every steered prefill, and the reference's in every
  fast unit's activation reads (which stop after the site: :func:`.site.blocks_through`).
  ``visible``: the fewest changed prompts of any unit reached ``steering.min_changed_fraction``; below it the
  report says steering had no visible effect (a statement, not a parity failure).
* ``native``: repeat 0 of each method generated through the library's own path on transformers' ``generate``
  (:mod:`.runner`) gave the same token ids as the fast decoder's unit; ``read_cosine``: its direction read
  without explicit position ids against the fast unit's (reported, not a condition).
* ``integrity``: every file a unit lists is present with the sha256 it was written with.

``parity_pass`` holds when ``failures`` is empty: every unit ok, every pair within thresholds with identical
token ids, every method within thresholds of the reference, the site checks exact, the native units identical
and the files intact. A method *passes* (``methods_passing``) when its own units meet all of that and it
belongs to the largest group of such methods that agree with each other (within thresholds, identical token
ids), if that group is a strict majority: no method is the yardstick, so one deviating library, whichever it
is, does not fail the others. Parity needs at least two methods.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import file_problems
from .spec import ParitySpec, ScoreSpec, SpecError

LABELS = ("coherent", "garbled", "normal")
SCORE_VERSION = 2
RESULT_VERSION = 2
REFERENCE = ("reference", -1)


@dataclass(frozen=True)
class ModelResult:
    result: dict[str, Any]
    # (method, repeat) -> float32 unit vector; ("reference", -1) the reference; ("native:<m>", 0) native reads
    directions: dict[tuple[str, int], np.ndarray]
    integrity_problems: list[str] = field(default_factory=list)


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


def _differing(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(1 for x, y in zip(a, b, strict=False) if x != y) + abs(len(a) - len(b))


def _within(cos: list[float], dist: list[float], parity: ParitySpec) -> bool:
    return bool(cos) and min(cos) >= parity.min_cosine and max(dist) <= parity.max_l2


def _site_problems(name: str, checks: Mapping[str, Any], kinds: tuple[str, ...]) -> list[str]:
    """Why a unit's site checks fail: a check of a kind the unit must have is missing, a steered pass did not
    receive exactly raw + delta, an unsteered pass changed, the residual changed between two other blocks, a
    pass block L+1 never received, or no pass at all."""
    problems = [f"{name}: its {kind} site check is missing" for kind in kinds if kind not in checks]
    for kind, check in sorted(checks.items()):
        if check["forward_passes"] == 0:
            problems.append(f"{name}: no forward pass reached the site in its {kind} work")
        elif check["checked_passes"] != check["forward_passes"]:
            problems.append(
                f"{name}: only {check['checked_passes']} of {check['forward_passes']} {kind} passes through "
                "the site reached the next block"
            )
        if check["max_abs_error"] != 0.0:
            wanted = "raw + alpha x direction" if kind == "steered" else "the unsteered residual"
            problems.append(
                f"{name}: in its {kind} passes the residual after the site differed from {wanted} "
                f"(max abs error {check['max_abs_error']:.3g})"
            )
        if check.get("elsewhere_max_abs_error", 0.0) != 0.0:
            problems.append(
                f"{name}: in its {kind} passes the residual changed between blocks other than the site "
                f"(max abs error {check['elsewhere_max_abs_error']:.3g})"
            )
    return problems


_UNIT_CHECKS = ("reads", "steered")
# A unit result.json claims but does not hold (scored as failed; see the claims check in score_model).
_MISSING: dict[str, Any] = {"ok": False, "error": "missing from result.json"}


def score_model(model: ModelResult, parity: ParitySpec) -> dict[str, Any]:
    result, dirs = model.result, model.directions
    repeats = int(result["repeats"])
    methods = sorted(result["methods"])
    units = {(u["method"], int(u["repeat"])): u for u in result["units"]}
    natives = {u["method"]: u for u in result["native"]}
    ok = {key for key, u in units.items() if u.get("ok")}
    failures: list[str] = []
    own_problems: dict[str, list[str]] = {m: [] for m in methods}  # what keeps a method from passing

    per_method: dict[str, Any] = {}
    for m in methods:
        ok_repeats = [r for r in range(repeats) if (m, r) in ok]
        entry: dict[str, Any] = {"n_ok": len(ok_repeats), "repeats": repeats}
        for label in LABELS:
            entry[label] = _mean_std(
                [units[(m, r)]["counts"][label] / len(units[(m, r)]["classes"]) for r in ok_repeats]
            )
        entry["changed_fraction"] = _mean_std([float(units[(m, r)]["changed_fraction"]) for r in ok_repeats])
        cosines = [cosine(dirs[(m, a)], dirs[(m, b)]) for a, b in itertools.combinations(ok_repeats, 2)]
        entry["within_method_cosine_min"] = min(cosines) if cosines else (1.0 if ok_repeats else None)
        per_method[m] = entry
        for r in range(repeats):
            if (m, r) not in ok:
                own_problems[m].append(f"{m}/r{r} failed: {units.get((m, r), _MISSING).get('error')}")

    pairs: list[dict[str, Any]] = []
    for a, b in itertools.combinations(methods, 2):
        shared = [r for r in range(repeats) if (a, r) in ok and (b, r) in ok]
        cos = [cosine(dirs[(a, r)], dirs[(b, r)]) for r in shared]
        dist = [l2(dirs[(a, r)], dirs[(b, r)]) for r in shared]
        differing = {r: _differing(units[(a, r)]["token_ids"], units[(b, r)]["token_ids"]) for r in shared}
        same = all(n == 0 for n in differing.values()) and len(shared) == repeats
        pair = {
            "a": a,
            "b": b,
            "cosine": min(cos) if cos else None,
            "l2": max(dist) if dist else None,
            "outputs_identical": same,
            "texts_identical": len(shared) == repeats
            and all(units[(a, r)]["outputs"] == units[(b, r)]["outputs"] for r in shared),
            "within_thresholds": _within(cos, dist, parity),
        }
        pairs.append(pair)
        if shared and not pair["within_thresholds"]:
            failures.append(
                f"{a} vs {b}: directions outside the thresholds (cosine {min(cos):.10f}, L2 {max(dist):.3e}; "
                f"required cosine >= {parity.min_cosine}, L2 <= {parity.max_l2})"
            )
        for r, n in sorted(differing.items()):
            if n:
                failures.append(f"{a} vs {b}: token ids differ on {n} eval prompt(s) in repeat {r}")

    # The independent reference.
    ref_unit = result["reference"]
    ref_ok = bool(ref_unit.get("ok")) and REFERENCE in dirs
    if not ref_ok:
        failures.append(
            f"the reference direction was not computed: {ref_unit.get('error') or 'file missing'}"
        )
    reference: dict[str, Any] = {"ok": ref_ok, "error": ref_unit.get("error"), "methods": {}}
    for m in methods:
        ok_repeats = [r for r in range(repeats) if (m, r) in ok]
        cos = [cosine(dirs[(m, r)], dirs[REFERENCE]) for r in ok_repeats] if ref_ok else []
        dist = [l2(dirs[(m, r)], dirs[REFERENCE]) for r in ok_repeats] if ref_ok else []
        within = _within(cos, dist, parity)
        reference["methods"][m] = {
            "cosine": min(cos) if cos else None,
            "l2": max(dist) if dist else None,
            "within_thresholds": within,
        }
        if cos and not within:
            own_problems[m].append(
                f"{m}: direction outside the thresholds of the independent reference "
                f"(cosine {min(cos):.10f}, L2 {max(dist):.3e})"
            )

    # The site checks.
    ref_prints = ref_unit.get("site_check", {}).get("unsteered", {}).get("prefill_fingerprints")
    steered: list[dict[str, Any]] = []
    unsteered: list[dict[str, Any]] = []
    site_failures: list[str] = []
    every_site_problem: list[str] = []
    for name, checks, method in [
        ("baseline", result["baseline"]["site_check"], None),
        ("reference", ref_unit.get("site_check", {}) if ref_unit.get("ok") else {"unsteered": None}, None),
        *((f"{m}/r{r}", units[(m, r)]["site_check"], m) for m, r in sorted(ok)),
        *((f"native/{m}", u["site_check"], m) for m, u in sorted(natives.items()) if u.get("ok")),
    ]:
        kinds = ("unsteered",) if method is None else _UNIT_CHECKS
        checks = {k: c for k, c in checks.items() if c is not None}
        problems = _site_problems(name, checks, kinds)
        if method is not None and not name.startswith("native/"):
            # The same decoder as the baseline's: block L's own prefill output must be bit-identical to it.
            base_prints = result["baseline"]["site_check"].get("unsteered", {}).get("prefill_fingerprints")
            if checks.get("steered", {}).get("prefill_fingerprints") != base_prints:
                problems.append(
                    f"{name}: block {result['site']['layer']}'s own output over the prompts differs from the "
                    "baseline's: the residual was changed inside or before the site"
                )
            # Its reads (which stop after the site) saw block L's output bit for bit as the reference's whole
            # forward passes over the same contrast batches did.
            if ref_ok and checks.get("reads", {}).get("prefill_fingerprints") != ref_prints:
                problems.append(
                    f"{name}: block {result['site']['layer']}'s output in its activation reads differs from "
                    "the reference's whole forward pass over the same prompts: the read changed the residual "
                    "inside or before the site"
                )
        every_site_problem.extend(problems)
        (own_problems[method] if method else site_failures).extend(problems)
        for kind, check in checks.items():
            (steered if kind == "steered" else unsteered).append(check)
    failures.extend(site_failures)
    changed = [float(units[key]["changed_fraction"]) for key in ok]
    min_changed = float(result["steering"]["min_changed_fraction"])
    steering = {
        "site_exact": bool(steered) and not every_site_problem,
        "max_abs_error": max((c["max_abs_error"] for c in steered), default=None),
        "forward_passes": sum(int(c["forward_passes"]) for c in steered),
        "positions": sum(int(c["positions"]) for c in steered),
        "unsteered_max_abs_error": max((c["max_abs_error"] for c in unsteered), default=None),
        "changed_fraction_min": min(changed) if changed else None,
        "min_changed_fraction": min_changed,
        "visible": bool(changed) and min(changed) >= min_changed,
    }

    # The library-native cross-check.
    native: dict[str, Any] = {"methods": {}}
    for m in methods:
        u, fast = natives.get(m, _MISSING), units.get((m, 0), _MISSING)
        identical = bool(u.get("ok")) and (m, 0) in ok and u["token_ids"] == fast["token_ids"]
        read = dirs.get((f"native:{m}", 0))
        native["methods"][m] = {
            "ok": bool(u.get("ok")),
            "error": u.get("error"),
            "tokens_identical": identical,
            "read_cosine": cosine(read, dirs[(m, 0)]) if read is not None and (m, 0) in ok else None,
            "wall_s": u.get("wall_s"),
        }
        if not u.get("ok"):
            own_problems[m].append(f"native/{m} failed: {u.get('error')}")
        elif not identical:
            n = _differing(u["token_ids"], fast.get("token_ids", []))
            own_problems[m].append(
                f"native/{m}: token ids through the library's own generation differ from {m}/r0 on {n} eval "
                "prompt(s)"
            )
    native["all_identical"] = all(v["tokens_identical"] for v in native["methods"].values())

    integrity = {"ok": not model.integrity_problems, "problems": list(model.integrity_problems)}
    failures.extend(f"integrity: {p}" for p in model.integrity_problems)
    for m in methods:
        failures.extend(own_problems[m])

    if len(methods) < 2:
        failures.append(f"only {len(methods)} method was run: parity needs at least two to compare")
    # What result.json claims was run must be what its records hold: a file edited to "repeats": 0, or with
    # a method's units dropped, once left nothing to compare and passed (an adversarial probe).
    expected_units = {(m, r) for m in methods for r in range(repeats)}
    if repeats < 1:
        failures.append(
            f"result.json: repeats is {repeats}: parity needs at least one repeat of every method"
        )
    if set(units) != expected_units or len(result["units"]) != len(expected_units):
        failures.append(
            f"result.json: its units are not each of methods {methods} x repeats {repeats} exactly once"
        )
    if sorted(natives) != methods or len(result["native"]) != len(methods):
        failures.append(f"result.json: its native cross-check units are not one per method of {methods}")

    # A method passes on its own checks, then by agreeing with the largest group of methods that pass them too
    # (a strict majority): no method is the yardstick, so a deviating one cannot fail the others.
    def agree(a: str, b: str) -> bool:
        pair = next(p for p in pairs if {p["a"], p["b"]} == {a, b})
        return bool(pair["within_thresholds"] and pair["outputs_identical"])

    sound = [m for m in methods if not own_problems[m] and reference["methods"][m]["within_thresholds"]]
    if site_failures:
        sound = []
    groups: list[list[str]] = [[m, *(n for n in sound if n != m and agree(m, n))] for m in sound]
    groups = [g for g in groups if all(agree(a, b) for a, b in itertools.combinations(g, 2))]
    sizes = [len(g) for g in groups]
    largest = sorted(groups[sizes.index(max(sizes))]) if groups else []
    passing = largest if len(largest) * 2 > len(sound) else []
    all_ok = all(per_method[m]["n_ok"] == repeats for m in methods)
    return {
        "methods": per_method,
        "pairs": pairs,
        "outputs_identical": all_ok and all(p["outputs_identical"] for p in pairs),
        "reference": reference,
        "steering": steering,
        "native": native,
        "integrity": integrity,
        "numerics": result["numerics"],
        "failures": failures,
        "parity_pass": not failures,
        "methods_passing": passing,
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
            "reference_ok": s["reference"]["ok"]
            and all(m["within_thresholds"] for m in s["reference"]["methods"].values()),
            "site_exact": s["steering"]["site_exact"],
            "native_identical": s["native"]["all_identical"],
            "steering_visible": s["steering"]["visible"],
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


def load_model_result(path: str | Path, key: str = "") -> ModelResult:
    """A result.json and the direction arrays it names; each unit record and each file it lists is checked
    against the sha256 its unit recorded."""
    path = Path(path)
    result = json.loads(path.read_text())
    if result.get("result_version") != RESULT_VERSION:
        raise SpecError(
            f"results.{key}" if key else "results",
            f"result_version {result.get('result_version')} is not {RESULT_VERSION}: run the model again",
        )
    out = path.parent
    problems: list[str] = []
    directions: dict[tuple[str, int], np.ndarray] = {}
    named: list[tuple[str, tuple[str, int], dict[str, Any]]] = [("reference", REFERENCE, result["reference"])]
    named += [(f"{u['method']}/r{u['repeat']}", (u["method"], int(u["repeat"])), u) for u in result["units"]]
    named += [(f"native/{u['method']}", (f"native:{u['method']}", 0), u) for u in result["native"]]
    problems.extend(f"baseline: {p}" for p in file_problems(out, result["baseline"]))
    for name, slot, unit in named:
        bad = file_problems(out, unit)
        has_direction = bool(unit.get("ok") and unit.get("direction_file"))
        if has_direction and unit["direction_file"] not in unit.get("files", {}):
            bad.append(f"{unit['direction_file']} has no recorded sha256")
        problems.extend(f"{name}: {p}" for p in bad)
        if not has_direction:
            continue
        if (out / unit["direction_file"]).is_file():
            directions[slot] = np.load(out / unit["direction_file"], allow_pickle=False)
        else:
            unit["ok"], unit["error"] = False, f"its direction file {unit['direction_file']} is missing"
    return ModelResult(result=result, directions=directions, integrity_problems=problems)


def score_from_spec(spec: ScoreSpec) -> dict[str, Any]:
    return score({key: load_model_result(p, key) for key, p in spec.results.items()}, spec.parity)
