"""A double of the Modal SDK boundary (``modal_launch.ModalPort``): the one place in phasegate where a double
stands in for a real service, because this machine has no Modal account. It keeps Modal's observable
semantics that the launcher relies on: ``get(timeout)`` raises the builtin ``TimeoutError`` while a call has
no output, raises another exception for a failed, cancelled or unknown call, and returns the same output again
on every later ``get``; the Dict's ``put(skip_if_exists=True)`` is atomic.

State can live in a JSON file (``PHASEGATE_MODAL_FAKE_STATE``) so that separate launcher processes, as the
TypeScript backend starts them, share one "Modal". Each spawned call's outcome is fixed at spawn time from
``PHASEGATE_MODAL_FAKE_OUTCOME``: ``ok`` (default), ``fail``, ``invalid``, ``crash`` or ``hang``.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
)


class RemoteError(Exception):
    """Modal's RemoteError: a call that crashed on the platform (same class name: modal_job.CALL_OVER)."""


class NotFoundError(Exception):
    """Modal's NotFoundError for an unknown call id."""


class AuthError(Exception):
    """Modal's AuthError: the credentials were rejected."""


class InputCancellation(Exception):
    """What ``get`` raises for a cancelled call."""


class ProbeConnectionError(Exception):
    """A network error while polling: says nothing about whether the call runs (Modal's ConnectionError)."""


def fake_result(spec: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A well-formed ``ok`` output of ``run_model``: result.json plus one direction per method and repeat."""
    buf = io.BytesIO()
    np.save(buf, np.ones(4, dtype=np.float32) / 2.0)
    directions = {
        f"directions/{m}_r{r}.npy": buf.getvalue() for m in spec["methods"] for r in range(spec["repeats"])
    }
    result = {"result_version": 1, "phase_id": spec["phase_id"], "model_key": spec["model_key"],
              "fake_modal_call": call_id, "methods": spec["methods"], "repeats": spec["repeats"]}  # fmt: skip
    return {"status": "ok", "gpu_seconds": 12.5, "message": None,
            "files": {**directions, "result.json": json.dumps(result).encode()}}  # fmt: skip


class FakeModal:
    def __init__(self, state_path: Path | None = None, *, outcome: str = "ok", app: str = "ap-fake") -> None:
        self._path = state_path
        self._memory: dict[str, Any] = {"calls": {}, "dict": {}, "spawns": []}
        self.outcome = outcome
        self._app = app
        self.launches = FakeDict(self)
        # Tests set this to an exception instance to simulate the worker dying while it waits on a call.
        self.die_on_get: BaseException | None = None

    @classmethod
    def from_env(cls) -> FakeModal:
        path = os.environ.get("PHASEGATE_MODAL_FAKE_STATE") or str(
            Path(tempfile.gettempdir()) / "phasegate-modal-fake.json"
        )
        return cls(Path(path), outcome=os.environ.get("PHASEGATE_MODAL_FAKE_OUTCOME", "ok"))

    @contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        """The state, locked and written back on exit (file-backed), or the in-memory one."""
        if self._path is None:
            yield self._memory
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self._path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self._path.read_text()) if self._path.exists() else {}
            except json.JSONDecodeError:
                state = {}
            state = {"calls": {}, "dict": {}, "spawns": [], **state}
            yield state
            tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self._path)

    @property
    def spawned(self) -> list[str]:
        with self.state() as s:
            return list(s["spawns"])

    def app_id(self) -> str:
        return self._app

    def spawn(self, spec: dict[str, Any], *, gpu: str, timeout_s: int) -> FakeCall:
        # What Modal raises before any call exists: rejected credentials, an app never deployed.
        if self.outcome == "auth_error":
            raise AuthError("invalid token")
        if self.outcome == "not_deployed":
            raise NotFoundError("Lookup failed for Function 'run_model' from the 'phasegate' app")
        if self.outcome not in OUTCOMES and not self.outcome.startswith("duplicate:"):
            raise ValueError(f"unknown fake outcome {self.outcome!r}")
        with self.state() as s:
            call_id = f"fc-fake-{len(s['spawns']) + 1}"
            s["spawns"].append(call_id)
            s["calls"][call_id] = {"spec": spec, "gpu": gpu, "timeout_s": timeout_s, "outcome": self.outcome,
                                   "cancelled": False}  # fmt: skip
        return FakeCall(self, call_id)

    def from_id(self, call_id: str) -> FakeCall:
        return FakeCall(self, call_id)

    def set_outcome(self, call_id: str, outcome: str) -> None:
        with self.state() as s:
            s["calls"][call_id]["outcome"] = outcome

    def call(self, call_id: str) -> dict[str, Any]:
        with self.state() as s:
            return dict(s["calls"][call_id])


class FakeCall:
    def __init__(self, fake: FakeModal, call_id: str) -> None:
        self._fake = fake
        self.object_id = call_id

    def get(self, timeout: float | None = None) -> Any:
        if self._fake.die_on_get is not None:
            raise self._fake.die_on_get
        with self._fake.state() as s:
            call = s["calls"].get(self.object_id)
        if call is None:
            raise NotFoundError(f"function call {self.object_id} not found")
        if call["cancelled"]:
            raise InputCancellation(f"function call {self.object_id} was cancelled")
        outcome = str(call["outcome"])
        if outcome == "hang":
            time.sleep(min(timeout or 0.0, 0.2))
            raise TimeoutError()
        if outcome == "probe_error":
            # The call runs; polling it fails on the network.
            raise ProbeConnectionError("polling failed: connection reset")
        if outcome == "remote_timeout":
            raise TimeoutError("a TimeoutError raised by the remote function itself")
        if outcome == "crash":
            raise RemoteError("container exited unexpectedly")
        if outcome.startswith("duplicate:"):
            return {"status": "duplicate", "owner": outcome.split(":", 1)[1], "gpu_seconds": 0.0, "files": {}}
        if outcome in ("fail", "invalid"):
            status = "failure" if outcome == "fail" else "invalid_spec"
            return {"status": status, "gpu_seconds": 3.0, "files": {}, "message": f"fake {status}"}
        return fake_result(call["spec"], self.object_id)

    def cancel(self) -> None:
        with self._fake.state() as s:
            if self.object_id in s["calls"]:
                s["calls"][self.object_id]["cancelled"] = True


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
