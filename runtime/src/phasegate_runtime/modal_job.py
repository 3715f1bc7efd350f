"""The body of the Modal GPU function, free of the Modal SDK so that it runs (and is tested) on any machine.

It is the local backend's per-model run, unchanged: the same spec JSON, the same ``python -m phasegate_runtime
run`` subprocess, the same checkpoint folder layout. Only two spec fields are container-specific and are
rewritten: ``cache_dir`` (the Volume's model cache) and, as a consequence, the spec hash recorded in the
result (it covers ``cache_dir``). Outputs and directions do not depend on either.

The run folder lives on the Volume at ``<root>/runs/<phase_id>/<model_key>``, stable across attempts, so a
retried call resumes from the checkpoints of the failed one, exactly as a local retry does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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

# What a container costs besides its run (the ledger's upper bound, modal_launch.CallBook): it idles this
# long after its call before it stops (the function's `scaledown_window`; Modal's default is 60 s) ...
SCALEDOWN_WINDOW_S = 2
# ... and a container asked to stop (call over, cancelled, timed out) takes at most this long to be gone.
# Not a documented Modal figure: an assumption, checked against the bill by `modal_launch reconcile`.
STOP_MARGIN_S = 10
# The container's CPU and memory reservation: Modal bills CPU and memory on GPU containers too, at
# max(request, use); the limit (the launcher's `--cpu-limit` / `--memory-limit-mib`, from the pricing table)
# caps the use, so that the ledger can price it. The request is what the scheduler reserves.
CPU_REQUEST_CORES = 1.0
MEMORY_REQUEST_MIB = 8192
DONE_FILE = "done.json"

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
    spec_sha = hashlib.sha256(json.dumps(container_spec, sort_keys=True).encode()).hexdigest()
    if _done_for(run_dir, spec_sha):
        # A late retry or an orphan of a run that already finished: nothing is loaded and nothing runs again.
        return {
            "status": "ok",
            "exit_code": 0,
            "message": None,
            "reused": True,
            "gpu_seconds": time.monotonic() - started,
            "files": collect_files(run_dir),
        }
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
    if status == "ok":
        (run_dir / DONE_FILE).write_text(json.dumps({"spec_sha256": spec_sha, "finished_at": time.time()}))
    return {
        "status": status,
        "exit_code": proc.returncode,
        "message": message,
        "reused": False,
        "gpu_seconds": time.monotonic() - started,
        "files": collect_files(run_dir) if status == "ok" else {},
    }


def _done_for(run_dir: Path, spec_sha: str) -> bool:
    """The durable "done" marker: this exact spec (sha256 of the container spec) ran to the end here."""
    try:
        marker = json.loads((run_dir / DONE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("spec_sha256") == spec_sha
        and (run_dir / "result.json").is_file()
    )


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
# A claim names the call and the container (Modal's task id). Modal restarts a preempted input in a new
# container with the same call id: the newcomer sees its own call under another task, knows the old container
# is gone, and takes the claim over; the old container's late release (if it ran at all) finds another task
# in the claim and leaves it alone.
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


def claim_call(value: Any) -> str | None:
    """The call id a claim names (claims written before they named a container were the bare call id)."""
    if isinstance(value, dict):
        call = value.get("call_id")
        return call if isinstance(call, str) else None
    return value if isinstance(value, str) else None


def _claim_task(value: Any) -> str | None:
    return value.get("task") if isinstance(value, dict) else None


def take_claim(
    store: ClaimStore,
    key: str,
    call_id: str,
    task_id: str,
    *,
    is_live: Callable[[str], bool],
    sleep: Callable[[float], None] = time.sleep,
    settle_s: float = CLAIM_SETTLE_S,
) -> str | None:
    """Takes the (phase, model) claim for this call in this container: None if taken, else the live owner."""
    mine = {"call_id": call_id, "task": task_id, "at": time.time()}
    if store.put(key, mine, skip_if_exists=True):
        return None
    owner = store.get(key)
    if claim_call(owner) == call_id:
        # Ours already, or our own input restarted in a new container after a preemption: the old one is gone.
        if _claim_task(owner) != task_id:
            store.put(key, mine)
        return None
    owner_call = claim_call(owner)
    if owner_call is not None and is_live(owner_call):
        return owner_call
    store.put(key, mine)  # stale claim (its call ended without releasing): take it over, then settle
    sleep(settle_s)
    owner = store.get(key)
    return None if claim_call(owner) == call_id and _claim_task(owner) == task_id else claim_call(owner)


def release_claim(store: ClaimStore, key: str, call_id: str, task_id: str) -> None:
    """Releases the claim only if this container holds it (not a restarted copy of its own input)."""
    owner = store.get(key)
    if claim_call(owner) == call_id and _claim_task(owner) in (task_id, None):
        store.pop(key, None)  # gone already (another release, an expiry): nothing to do


class VolumeOps(Protocol):
    def reload(self) -> None: ...
    def commit(self) -> None: ...


def run_in_container(
    spec: dict[str, Any],
    *,
    call_id: str,
    task_id: str,
    claims: ClaimStore,
    volume: VolumeOps,
    paths: VolumePaths,
    is_live: Callable[[str], bool],
    body: Callable[[dict[str, Any], VolumePaths], dict[str, Any]] = run_model_body,
) -> dict[str, Any]:
    """What the Modal function does, free of the SDK: claim, run (or reuse a finished run), clean up.

    Never raises for a run's failure, and never lets a ``TimeoutError`` escape (the caller's SDK raises that
    same builtin for "no output yet"). Clean-up errors (a Volume commit conflict, a Dict call that fails) are
    logged, not raised: a finished run must not be thrown away and paid for again.
    """
    key = claim_key(str(spec["phase_id"]), str(spec["model_key"]))
    owner = take_claim(claims, key, call_id, task_id, is_live=is_live)
    if owner is not None:
        return {"status": "duplicate", "owner": owner, "gpu_seconds": 0.0, "files": {}, "message": None}
    result: dict[str, Any]
    try:
        volume.reload()
        result = body(spec, paths)
    except TimeoutError as err:
        result = {
            "status": "failure",
            "gpu_seconds": None,
            "files": {},
            "message": f"TimeoutError in the container: {err}",
        }
    finally:
        # Checkpoints and the done marker must outlive this container for a retry to resume or reuse them
        # (Volumes also commit on a clean exit).
        for step, action in (
            ("volume commit", volume.commit),
            ("claim release", lambda: release_claim(claims, key, call_id, task_id)),
        ):
            try:
                action()
            except Exception as err:  # noqa: BLE001 - logged; the result stands
                print(f"phasegate: {step} failed after the run: {type(err).__name__}: {err}", file=sys.stderr)
    return result


# --- The CPU download and the GPU smoke check ---------------------------------------------------------------


def prefetch_body(spec: dict[str, Any], paths: VolumePaths) -> dict[str, Any]:
    """Downloads the spec's model into the Volume's model cache, where ``run_model`` then finds it (the same
    ``resolve_model_path`` and ``cache_dir``). An error no retry can fix is an invalid spec, as in a run."""
    from .model_files import resolve_model_path
    from .spec import SpecError, parse_run_spec

    started = time.monotonic()
    try:
        model = parse_run_spec({**spec, "cache_dir": str(paths.models)}).model
        resolved = resolve_model_path(model, str(paths.models))
    except SpecError as err:
        return {"status": "invalid_spec", "message": str(err), "seconds": time.monotonic() - started}
    return {"status": "ok", "path": str(resolved), "message": None, "seconds": time.monotonic() - started}


def smoke_body(expected_gpu: str) -> dict[str, Any]:
    """What a GPU call really gets: driver, CUDA, torch, the device's name, and one matmul checked on it."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if not info["cuda_available"]:
        return {**info, "status": "failure", "message": "torch sees no CUDA device in the container"}
    info["gpu"] = torch.cuda.get_device_name(0)
    info["driver"] = _driver_version()
    a = torch.arange(64, dtype=torch.float32, device="cuda").reshape(8, 8)
    ok = bool(torch.equal((a @ a).cpu(), a.cpu() @ a.cpu()))
    # Modal's names (A100-80GB, H100) start the device's ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 ...").
    family = expected_gpu.split("-")[0].upper()
    if family not in str(info["gpu"]).upper():
        return {**info, "status": "failure", "message": f"asked for {expected_gpu}, got {info['gpu']}"}
    if not ok:
        return {**info, "status": "failure", "message": "an 8x8 matmul on the GPU differs from the CPU's"}
    return {**info, "status": "ok", "message": None}


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
