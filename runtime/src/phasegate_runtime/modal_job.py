"""The body of the Modal GPU function, free of the Modal SDK so that it runs (and is tested) on any machine.

It is the local backend's per-model run, unchanged: the same spec JSON, the same ``python -m phasegate_runtime
run`` subprocess, the same checkpoint folder layout. Only two spec fields are container-specific and are
rewritten: ``cache_dir`` (the Volume's model cache) and, as a consequence, the spec hash recorded in the
result (it covers ``cache_dir``). Outputs and directions do not depend on either.

The run folder lives on the Volume at ``<root>/runs/<phase_id>/<model_key>``, stable across attempts, so a
retried call resumes from the checkpoints of the failed one, exactly as a local retry does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# Names on the Modal side, shared by the app (modal_app) and the launcher (modal_launch), which must not need
# the image definition to look them up.
APP_NAME = "phasegate"
FUNCTION_NAME = "run_model"
VOLUME_NAME = "phasegate-data"
DICT_NAME = "phasegate-launches"
SECRET_NAME = "hf-secret"
# Billing reports group cost by App; this tag lets `modal_launch reconcile` pick phasegate's rows.
APP_TAGS = {"project": "phasegate"}

Status = Literal["ok", "invalid_spec", "failure", "duplicate"]

# Files that travel back to the caller's outDir: everything `score` and the reports read.
RETURNED_GLOBS = ("result.json", "units/*.json", "directions/*.npy")


@dataclass(frozen=True)
class VolumePaths:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    def run_dir(self, phase_id: str, model_key: str) -> Path:
        return self.root / "runs" / phase_id / model_key


def collect_files(run_dir: Path) -> dict[str, bytes]:
    """The run's outputs as ``{path relative to run_dir: bytes}``."""
    files: dict[str, bytes] = {}
    for pattern in RETURNED_GLOBS:
        for path in sorted(run_dir.glob(pattern)):
            files[str(path.relative_to(run_dir))] = path.read_bytes()
    return files


def _last_error(stdout: str) -> str | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("event") == "error":
                return str(event.get("message"))
    return None


def run_model_body(spec: dict[str, Any], paths: VolumePaths, *, python: str | None = None) -> dict[str, Any]:
    """Runs one per-model job in this container and returns a plain dict (never raises for a run failure).

    ``gpu_seconds`` is the wall time this body held the container's GPU, measured here: it is what Modal
    bills per second (plus container start-up, which only the billing report sees). Failures are returned as
    a status rather than raised, so that the caller never has to unpickle a remote exception class.
    """
    started = time.monotonic()
    phase_id, model_key = str(spec["phase_id"]), str(spec["model_key"])
    run_dir = paths.run_dir(phase_id, model_key)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.models.mkdir(parents=True, exist_ok=True)
    container_spec = {**spec, "cache_dir": str(paths.models)}
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(container_spec, indent=2))
    package_parent = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [
            python or sys.executable,
            "-m",
            "phasegate_runtime",
            "run",
            "--spec",
            str(spec_path),
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": package_parent, "PYTHONUNBUFFERED": "1"},
    )
    # Events go on to the container log as well, for `modal app logs`.
    sys.stderr.write(proc.stdout)
    status: Status = {0: "ok", 2: "invalid_spec"}.get(proc.returncode, "failure")  # type: ignore[assignment]
    message = None if status == "ok" else (_last_error(proc.stdout) or f"runtime exited {proc.returncode}")
    return {
        "status": status,
        "exit_code": proc.returncode,
        "message": message,
        "gpu_seconds": time.monotonic() - started,
        "files": collect_files(run_dir) if status == "ok" else {},
    }


# Exceptions of ``FunctionCall.get`` that say for certain the call is over (modal.exception, by class name, so
# that the double can raise the same names): it failed remotely, timed out on the platform, was cancelled, its
# output expired, or the id is unknown. Anything else (a network error, a gRPC status, an SDK bug) says
# nothing about the call, and a call that may be running must never be judged dead: that would pay twice.
CALL_OVER = frozenset(
    {
        "RemoteError",
        "FunctionTimeoutError",
        "OutputExpiredError",
        "NotFoundError",
        "InputCancellation",
        "ExecutionError",
    }
)


def call_is_over(err: BaseException) -> bool:
    return type(err).__name__ in CALL_OVER


# --- Modal-side deduplication ------------------------------------------------------------------------------
#
# The launcher records a spawned call id in a Modal Dict right after `spawn` returns. A worker that dies
# between the two leaves an orphan call that its retry cannot see, so the retry spawns a second call. The two
# containers then meet here, at start, before any GPU work: one claim per (phase, model) in the Dict, taken
# with an atomic put-if-absent; a claim held by a call that is still live makes the newcomer return
# "duplicate" at once (it pays seconds of container start, not a run), and the launcher that receives
# "duplicate" reattaches to the owner. A claim is released when its call ends; one left by a container killed
# outright is stale, and is taken over once its call is seen to be finished.
#
# Window that remains: taking over a STALE claim is a plain overwrite (Modal Dicts have no compare-and-swap).
# Two containers that find the same stale claim both overwrite it; each waits CLAIM_SETTLE_S and re-reads,
# and only the last writer runs. Both run only if one container's read-to-write gap exceeds CLAIM_SETTLE_S
# after the other's settle has passed: two containers starting within seconds of each other right after a
# hard-killed one, with a Dict call stalled between read and write.

CLAIM_SETTLE_S = 5.0


class ClaimStore(Protocol):
    def get(self, key: str) -> Any: ...
    def put(self, key: str, value: Any, *, skip_if_exists: bool = False) -> bool: ...
    def pop(self, key: str, default: Any = None) -> Any: ...


def claim_key(phase_id: str, model_key: str) -> str:
    return f"claim/{phase_id}/{model_key}"


def take_claim(
    store: ClaimStore,
    key: str,
    call_id: str,
    *,
    is_live: Any,
    sleep: Any = time.sleep,
    settle_s: float = CLAIM_SETTLE_S,
) -> str | None:
    """Takes the (phase, model) claim for ``call_id``: None if taken, else the live owner's call id."""
    if store.put(key, call_id, skip_if_exists=True):
        return None
    owner = store.get(key)
    if owner == call_id:
        return None
    if owner is not None and is_live(owner):
        return str(owner)
    store.put(key, call_id)  # stale claim (its call ended without releasing): take it over, then settle
    sleep(settle_s)
    owner = store.get(key)
    return None if owner == call_id else str(owner)


def release_claim(store: ClaimStore, key: str, call_id: str) -> None:
    if store.get(key) == call_id:
        store.pop(key, None)  # gone already (another release, an expiry): nothing to do
