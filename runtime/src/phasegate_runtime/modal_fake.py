"""A double of the Modal SDK boundary (``modal_launch.ModalPort``): the one place in phasegate where a double
stands in for a real service, because this machine has no Modal account. It keeps Modal's observable
semantics that the launcher relies on: ``get(timeout)`` raises the builtin ``TimeoutError`` while a call has
no output, raises another exception for a failed, cancelled or unknown call, and returns the same output again
on every later ``get``; the Dict's ``put(skip_if_exists=True)`` is atomic.

State can live in a JSON file (``PHASEGATE_MODAL_FAKE_STATE``) so that separate launcher processes, as the
TypeScript backend starts them, share one "Modal". Each spawned call's outcome is fixed at spawn time from
``PHASEGATE_MODAL_FAKE_OUTCOME`` (``OUTCOMES``), and so is how long it runs (``PHASEGATE_MODAL_FAKE_RUN_S``,
default 0: output at once).

Every outcome but one answers with a made-up output. ``execute`` runs the real container body instead:
``modal_job.run_in_container`` with ``run_model_body`` (claim, done marker, the runtime's ``run`` on the spec,
clean-up) in a child process on this machine, a folder beside the state file standing in for the Volume, the
model on this machine's CPU (the one change made to the spec). Its
call is ready once that process has written its output and ``run_s`` has passed (a stand-in for a GPU run's
length), so a phase on the double can reach FROZEN with real results of tiny models.

It also keeps Modal's bill, so that tests can hold the ledger against it: every call's containers, each billed
from its start to its end plus the idle ``scaledown_window`` (``billed_s``, once the call is over: finished,
failed, timed out on the platform, or cancelled). A container starts when the call is spawned (no queueing,
the most a call can be billed). ``preempt`` runs half, loses its container, and restarts the input in a
second one (billed both); a call whose (phase, model) already finished with the same spec on the "Volume"
returns that result at once (``reused``), as ``modal_job.run_model_body``'s done marker does; ``runs`` counts
the full runs per (phase, model) that did the work.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = (
    "ok",
    "fail",
    "invalid",
    "crash",
    "hang",
    "probe_error",
    "remote_timeout",
    "auth_error",
    "not_deployed",
    "preempt",
    "execute",
)
# What the double bills after a call's last output (modal_job.SCALEDOWN_WINDOW_S is the app's setting).
FAKE_SCALEDOWN_S = 2.0
# How long a preempted input waits for its second container, as a share of its run.
FAKE_RESTART_GAP = 0.25


class RemoteError(Exception):
    """Modal's RemoteError: a call that crashed on the platform (same class name: modal_job.CALL_OVER)."""


class NotFoundError(Exception):
    """Modal's NotFoundError for an unknown call id."""


class AuthError(Exception):
    """Modal's AuthError: the credentials were rejected."""


class InputCancellation(Exception):
    """What ``get`` raises for a cancelled call."""


class FunctionTimeoutError(Exception):
    """Modal's FunctionTimeoutError: the call ran past its timeout on the platform."""


class ProbeConnectionError(Exception):
    """A network error while polling: says nothing about whether the call runs (Modal's ConnectionError)."""


def fake_result(spec: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A well-formed ``ok`` output of ``run_model``: result.json plus one direction per method and repeat."""
    buf = io.BytesIO()
    np.save(buf, np.ones(4, dtype=np.float32) / 2.0)
    directions = {
        f"directions/{m}_r{r}.npy": buf.getvalue() for m in spec["methods"] for r in range(spec["repeats"])
    }
    result = {
        "result_version": 1,
        "phase_id": spec["phase_id"],
        "model_key": spec["model_key"],
        "fake_modal_call": call_id,
        "methods": spec["methods"],
        "repeats": spec["repeats"],
    }
    return {
        "status": "ok",
        "gpu_seconds": 12.5,
        "message": None,
        "files": {**directions, "result.json": json.dumps(result).encode()},
    }


def _spec_key(spec: dict[str, Any]) -> tuple[str, str]:
    return f"{spec.get('phase_id')}/{spec.get('model_key')}", hashlib.sha256(
        json.dumps(spec, sort_keys=True).encode()
    ).hexdigest()


class FakeModal:
    def __init__(
        self,
        state_path: Path | None = None,
        *,
        outcome: str = "ok",
        app: str = "ap-fake",
        run_s: float = 0.0,
        probe_errors: int = 0,
    ) -> None:
        self._path = state_path
        self._memory: dict[str, Any] = {}
        self.outcome = outcome
        self.run_s = run_s
        self.probe_errors = probe_errors
        self._app = app
        self.launches = FakeDict(self)
        # Tests set this to an exception instance to simulate the worker dying while it waits on a call.
        self.die_on_get: BaseException | None = None

    @classmethod
    def from_env(cls) -> FakeModal:
        path = os.environ.get("PHASEGATE_MODAL_FAKE_STATE") or str(
            Path(tempfile.gettempdir()) / "phasegate-modal-fake.json"
        )
        return cls(
            Path(path),
            outcome=os.environ.get("PHASEGATE_MODAL_FAKE_OUTCOME", "ok"),
            run_s=float(os.environ.get("PHASEGATE_MODAL_FAKE_RUN_S", "0") or 0),
            probe_errors=int(os.environ.get("PHASEGATE_MODAL_FAKE_PROBE_ERRORS", "0") or 0),
        )

    @contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        """The state, locked and written back on exit (file-backed), or the in-memory one."""
        empty: dict[str, Any] = {"calls": {}, "dict": {}, "spawns": [], "volume": {}, "runs": {}}
        if self._path is None:
            self._memory = {**empty, **self._memory}
            yield self._memory
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self._path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self._path.read_text()) if self._path.exists() else {}
            except json.JSONDecodeError:
                state = {}
            state = {**empty, **state}
            try:
                yield state
            finally:  # written back even when the block raises (a poll that fails still counts)
                tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self._path)

    @property
    def spawned(self) -> list[str]:
        with self.state() as s:
            return list(s["spawns"])

    def app_id(self) -> str:
        return self._app

    def _new_call(self, kind: str, spec: dict[str, Any], gpu: str, timeout_s: int, **extra: Any) -> FakeCall:
        with self.state() as s:
            call_id = f"fc-fake-{len(s['calls']) + 1}"
            if kind == "run":  # the GPU runs; the CPU download and the smoke check are in `calls` only
                s["spawns"].append(call_id)
            key, sha = _spec_key(spec)
            reused = kind == "run" and self.outcome == "ok" and s["volume"].get(key) == sha
            execute = kind == "run" and self.outcome == "execute"
            s["calls"][call_id] = {
                "kind": kind,
                "spec": spec,
                "gpu": gpu,
                "timeout_s": timeout_s,
                "outcome": self.outcome if kind == "run" else "ok",
                "cancelled": False,
                "spawned_at": time.time(),
                "run_s": 0.0 if reused else self.run_s,
                "reused": reused,
                "probe_errors_left": self.probe_errors,
                "ended_at": None,
                "containers": [],
                "billed_s": None,
                "pid": None,
                **extra,
            }
        if execute:
            self._execute(call_id)
        return FakeCall(self, call_id)

    def volume_dir(self) -> Path:
        """The folder that stands in for the Modal Volume of ``execute`` calls."""
        if self._path is None:
            raise ValueError("the execute outcome needs a state file (PHASEGATE_MODAL_FAKE_STATE)")
        return self._path.with_name(f"{self._path.name}.volume")

    def output_path(self, call_id: str) -> Path:
        return self.volume_dir() / "outputs" / f"{call_id}.pickle"

    def _execute(self, call_id: str) -> None:
        """Starts the container body of ``call_id`` in a process (and session) of its own, as a container."""
        log_dir = self.volume_dir() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{call_id}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "phasegate_runtime.modal_fake", "execute", str(self._path), call_id],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
        with self.state() as s:
            s["calls"][call_id]["pid"] = proc.pid

    def spawn(
        self,
        spec: dict[str, Any],
        *,
        gpu: str,
        timeout_s: int,
        cpu_limit: float = 0.0,
        memory_limit_mib: int = 0,
    ) -> FakeCall:
        # What Modal raises before any call exists: rejected credentials, an app never deployed.
        if self.outcome == "auth_error":
            raise AuthError("invalid token")
        if self.outcome == "not_deployed":
            raise NotFoundError("Lookup failed for Function 'run_model' from the 'phasegate' app")
        if self.outcome not in OUTCOMES and not self.outcome.startswith("duplicate:"):
            raise ValueError(f"unknown fake outcome {self.outcome!r}")
        return self._new_call(
            "run", spec, gpu, timeout_s, cpu_limit=cpu_limit, memory_limit_mib=memory_limit_mib
        )

    def prefetch(self, spec: dict[str, Any]) -> FakeCall:
        if self.outcome == "auth_error":
            raise AuthError("invalid token")
        return self._new_call("prefetch", spec, "cpu", 3 * 3600)

    def smoke(self, gpu: str) -> FakeCall:
        if self.outcome in ("auth_error", "not_deployed"):
            return self.spawn({}, gpu=gpu, timeout_s=300)  # raises as spawn does
        return self._new_call("smoke", {}, gpu, 300)

    def from_id(self, call_id: str) -> FakeCall:
        return FakeCall(self, call_id)

    def set_outcome(self, call_id: str, outcome: str) -> None:
        with self.state() as s:
            s["calls"][call_id]["outcome"] = outcome

    def call(self, call_id: str) -> dict[str, Any]:
        with self.state() as s:
            return dict(s["calls"][call_id])


def _finish(state: dict[str, Any], call: dict[str, Any], ended_at: float) -> None:
    """The call is over at ``ended_at``: its containers and what Modal bills for them."""
    if call["ended_at"] is not None:
        return
    start = float(call["spawned_at"])
    if call["outcome"] == "preempt" and call["kind"] == "run":
        half, gap = start + float(call["run_s"]) / 2, float(call["run_s"]) * FAKE_RESTART_GAP
        containers = [[start, min(half, ended_at)]]
        if ended_at > half + gap:
            containers.append([half + gap, ended_at])
    else:
        containers = [[start, ended_at]]
    call["ended_at"] = ended_at
    call["containers"] = containers
    call["billed_s"] = sum(b - a + FAKE_SCALEDOWN_S for a, b in containers)
    if call["kind"] == "run" and call["outcome"] in ("ok", "preempt", "execute") and not call["cancelled"]:
        key, sha = _spec_key(call["spec"])
        if not call["reused"]:
            state["runs"][key] = int(state["runs"].get(key, 0)) + 1
        state["volume"][key] = sha


class FakeCall:
    def __init__(self, fake: FakeModal, call_id: str) -> None:
        self._fake = fake
        self.object_id = call_id

    def _ready_at(self, call: dict[str, Any]) -> float:
        start, run_s = float(call["spawned_at"]), float(call["run_s"])
        if call["outcome"] == "hang":
            return start + float(call["timeout_s"])
        if call["outcome"] == "preempt":
            return start + run_s * (1 + FAKE_RESTART_GAP)
        if call["outcome"] == "execute" and call["kind"] == "run":
            out = self._fake.output_path(self.object_id)
            return max(start + run_s, out.stat().st_mtime) if out.exists() else float("inf")
        return start + run_s

    def get(self, timeout: float | None = None) -> Any:
        if self._fake.die_on_get is not None:
            raise self._fake.die_on_get
        with self._fake.state() as s:
            call = s["calls"].get(self.object_id)
            if call is None:
                raise NotFoundError(f"function call {self.object_id} not found")
            if call["cancelled"]:
                raise InputCancellation(f"function call {self.object_id} was cancelled")
            if call["probe_errors_left"] > 0:
                # The call runs; polling it fails on the network.
                call["probe_errors_left"] -= 1
                raise ProbeConnectionError("polling failed: connection reset")
            now, ready_at = time.time(), self._ready_at(call)
            output: dict[str, Any] | None = None
            if now >= ready_at and call["outcome"] == "execute" and call["kind"] == "run":
                output = pickle.loads(self._fake.output_path(self.object_id).read_bytes())
                call["reused"] = bool(output.get("reused", False))
            if now >= ready_at:
                _finish(s, call, ready_at)
        outcome, kind = str(call["outcome"]), str(call["kind"])
        if outcome == "probe_error":
            raise ProbeConnectionError("polling failed: connection reset")
        if now < ready_at:
            time.sleep(max(0.0, min(timeout or 0.0, ready_at - now, 0.2)))
            raise TimeoutError()
        if outcome == "hang":
            raise FunctionTimeoutError(
                f"function call {self.object_id} timed out after {call['timeout_s']} s"
            )
        if kind == "prefetch":
            return {"status": "ok", "path": "/data/models/fake", "message": None, "seconds": call["run_s"]}
        if kind == "smoke":
            return {
                "status": "ok",
                "message": None,
                "gpu": f"NVIDIA {call['gpu']}",
                "cuda": "12.8",
                "torch": "2.9.1",
                "driver": "570.0",
                "cuda_available": True,
            }
        if outcome == "remote_timeout":
            raise TimeoutError("a TimeoutError raised by the remote function itself")
        if outcome == "crash":
            raise RemoteError("container exited unexpectedly")
        if output is not None:
            return output
        if outcome.startswith("duplicate:"):
            return {"status": "duplicate", "owner": outcome.split(":", 1)[1], "gpu_seconds": 0.0, "files": {}}
        if outcome in ("fail", "invalid"):
            status = "failure" if outcome == "fail" else "invalid_spec"
            return {"status": status, "gpu_seconds": 3.0, "files": {}, "message": f"fake {status}"}
        return {**fake_result(call["spec"], self.object_id), "reused": call["reused"]}

    def cancel(self) -> None:
        with self._fake.state() as s:
            call = s["calls"].get(self.object_id)
            if call is not None and call["ended_at"] is None:
                call["cancelled"] = True
                _finish(s, call, time.time())
                if call.get("pid") is not None:  # the container goes, with the runtime it started
                    with suppress(ProcessLookupError):
                        os.killpg(int(call["pid"]), signal.SIGKILL)


class FakeDict:
    def __init__(self, fake: FakeModal) -> None:
        self._fake = fake

    def get(self, key: str) -> Any:
        with self._fake.state() as s:
            return s["dict"].get(key)

    def put(self, key: str, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self._fake.state() as s:
            if skip_if_exists and key in s["dict"]:
                return False
            s["dict"][key] = value
            return True

    def pop(self, key: str, default: Any = None) -> Any:
        with self._fake.state() as s:
            return s["dict"].pop(key, default)


class _FolderVolume:
    """The Volume of ``execute`` calls: a folder on this machine, so reload and commit have nothing to do."""

    def reload(self) -> None:
        pass

    def commit(self) -> None:
        pass


def execute_call(state_path: Path, call_id: str) -> None:
    """The container of an ``execute`` call: the real body on its spec; the output written atomically."""
    from .modal_job import VolumePaths, run_in_container

    fake = FakeModal(state_path)
    call = fake.call(call_id)

    def is_live(other: str) -> bool:
        with fake.state() as s:
            c = s["calls"].get(other)
            return c is not None and c["ended_at"] is None

    # The one change to the spec: this machine has no GPU, so the "container" runs the model on its CPU.
    spec = {**call["spec"], "model": {**call["spec"]["model"], "device": "cpu"}}
    output = run_in_container(
        spec,
        call_id=call_id,
        task_id=f"ta-{call_id}",
        claims=fake.launches,
        volume=_FolderVolume(),
        paths=VolumePaths(fake.volume_dir()),
        is_live=is_live,
    )
    out = fake.output_path(call_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(pickle.dumps(output))
    os.replace(tmp, out)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "execute":
        sys.exit("usage: python -m phasegate_runtime.modal_fake execute STATE_FILE CALL_ID")
    execute_call(Path(sys.argv[2]), sys.argv[3])
