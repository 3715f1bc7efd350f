"""Launch, reattach to, inspect and cancel a per-model run on Modal; reconcile its cost. Prints JSON.

    python -m phasegate_runtime.modal_launch launch --phase P --model M --attempt N --gpu A10G \\
        --timeout-minutes 60 --spec SPEC.json --out DIR
    python -m phasegate_runtime.modal_launch status --phase P --model M --out DIR
    python -m phasegate_runtime.modal_launch cancel --phase P --model M --out DIR
    python -m phasegate_runtime.modal_launch reconcile --phase-dir WORK/PHASE --protocol PROTOCOL.json

``launch`` prints newline-delimited JSON events (``launching``, ``launched``, ``running``, ``finished``,
``error``) like the runtime, and waits for the call. Exit codes: 0 success (result.json and directions are in
DIR); 1 retryable failure; 2 invalid spec (do not retry); 3 missing Modal credentials (do not retry).
SIGTERM just ends this process: the remote call keeps running and the next ``launch`` reattaches to it
(a worker that dies must not cancel a paid run its retry can still use). Cancelling is ``cancel``.

How a second paid run is avoided. The call id is known only once ``spawn`` returns; it is written at once to
``DIR/modal-launch.json`` (local, no network) and to the Modal Dict under ``<phase>/<model>`` (not the
attempt: a retry must find it). A ``launch`` first looks there and reattaches to a live call, takes the
result of a finished one, and spawns only when the recorded call failed, was cancelled, expired or is
unknown. The window between ``spawn`` returning and the Dict write (a worker killed in those milliseconds)
is closed on the Modal side: the containers claim ``(phase, model)`` before any GPU work, and the orphan or
the new call, whichever starts second, returns ``duplicate`` within seconds; a launcher holding the
duplicate reattaches to the owner. What remains is described at ``modal_job.take_claim``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .checkpoint import atomic_write_bytes, atomic_write_json
from .modal_job import (
    APP_NAME,
    CPU_REQUEST_CORES,
    DICT_NAME,
    FUNCTION_NAME,
    MEMORY_REQUEST_MIB,
    SCALEDOWN_WINDOW_S,
    STOP_MARGIN_S,
    call_is_over,
    claim_call,
    claim_key,
)

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_MISSING_CREDENTIALS = 0, 1, 2, 3
RECORD_FILE = "modal-launch.json"
PREFETCH_FUNCTION, SMOKE_FUNCTION = "prefetch_model", "smoke"
# How long to wait before polling again after a poll failed on the network.
RETRY_POLL_S = 5.0
# The shortest remote call worth spawning (Modal's own minimum timeout is 10 s).
MIN_CALL_S = 10
# What a call may still be billed after its launcher saw it end (idle scale-down, then the container's stop).
AFTER_END_MS = (SCALEDOWN_WINDOW_S + STOP_MARGIN_S) * 1000

CREDENTIALS_HELP = (
    "Modal credentials are missing: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET in the worker's environment, "
    "or run `modal token new` (or `modal token set --token-id ... --token-secret ...`) to write ~/.modal.toml"
)


class CallHandle(Protocol):
    """The part of ``modal.FunctionCall`` the launcher uses."""

    @property
    def object_id(self) -> str: ...
    def get(self, timeout: float | None = None) -> Any: ...
    def cancel(self) -> None: ...


class Store(Protocol):
    """The part of ``modal.Dict`` the launcher uses."""

    def get(self, key: str) -> Any: ...
    def put(self, key: str, value: Any, *, skip_if_exists: bool = False) -> bool: ...


class ModalPort(Protocol):
    """The Modal SDK boundary: the real adapter below, or the double in ``modal_fake``."""

    @property
    def launches(self) -> Store: ...

    def app_id(self) -> str: ...
    def spawn(
        self, spec: dict[str, Any], *, gpu: str, timeout_s: int, cpu_limit: float, memory_limit_mib: int
    ) -> CallHandle: ...
    def prefetch(self, spec: dict[str, Any]) -> CallHandle: ...
    def smoke(self, gpu: str) -> CallHandle: ...
    def from_id(self, call_id: str) -> CallHandle: ...


class SdkModal:
    """The real SDK, against the deployed app (``modal deploy -m phasegate_runtime.modal_app``)."""

    def __init__(self) -> None:
        import modal

        self._modal = modal
        self._launches: Store = modal.Dict.from_name(DICT_NAME, create_if_missing=True)

    @property
    def launches(self) -> Store:
        return self._launches

    def app_id(self) -> str:
        return str(self._modal.App.lookup(APP_NAME).app_id)

    def _function(self, name: str) -> Any:
        return self._modal.Function.from_name(APP_NAME, name)

    def spawn(
        self, spec: dict[str, Any], *, gpu: str, timeout_s: int, cpu_limit: float, memory_limit_mib: int
    ) -> CallHandle:
        # (request, limit) pairs: Modal bills CPU and memory at max(request, use), and the limit caps the use.
        fn = self._function(FUNCTION_NAME).with_options(
            gpu=gpu,
            timeout=timeout_s,
            cpu=(min(CPU_REQUEST_CORES, cpu_limit), cpu_limit),
            memory=(min(MEMORY_REQUEST_MIB, memory_limit_mib), memory_limit_mib),
        )
        call: CallHandle = fn.spawn(spec)
        return call

    def prefetch(self, spec: dict[str, Any]) -> CallHandle:
        call: CallHandle = self._function(PREFETCH_FUNCTION).spawn(spec)
        return call

    def smoke(self, gpu: str) -> CallHandle:
        call: CallHandle = self._function(SMOKE_FUNCTION).with_options(gpu=gpu).spawn(gpu)
        return call

    def from_id(self, call_id: str) -> CallHandle:
        call: CallHandle = self._modal.FunctionCall.from_id(call_id)
        return call


# Modal SDK exceptions (by class name, as modal.exception defines them) raised before any call exists, that
# say the account is not set up for phasegate: exit 3, not retried.
SETUP_ERRORS = {
    "AuthError": "Modal rejected the credentials: check MODAL_TOKEN_ID / MODAL_TOKEN_SECRET (or ~/.modal.toml"
    " and MODAL_PROFILE); deploy the app and run the worker with the same profile",
    "NotFoundError": f"the Modal app {APP_NAME!r} is not deployed in this workspace and environment: run "
    "`modal deploy -m phasegate_runtime.modal_app` from runtime/ (see docs/modal.md)",
}


def has_credentials(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or a ~/.modal.toml (MODAL_CONFIG_PATH) that holds a token."""
    if env.get("MODAL_TOKEN_ID") and env.get("MODAL_TOKEN_SECRET"):
        return True
    config = Path(env.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    try:
        text = config.read_text()
    except OSError:
        return False
    return "token_id" in text and "token_secret" in text


def make_port() -> ModalPort:
    if os.environ.get("PHASEGATE_MODAL_FAKE", "").strip().lower() in {"1", "true", "yes"}:
        from .modal_fake import FakeModal

        return FakeModal.from_env()
    return SdkModal()


@dataclass(frozen=True)
class Job:
    phase_id: str
    model_key: str
    attempt: int
    gpu: str
    timeout_s: int
    spec_path: Path
    out_dir: Path
    # The container's CPU and memory limits (the pricing table's `modal_container`), which the ledger prices.
    cpu_limit: float = 4.0
    memory_limit_mib: int = 49152

    @property
    def key(self) -> str:
        return f"{self.phase_id}/{self.model_key}"


class Emit:
    def __init__(self, stream: Any = None) -> None:
        self._stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        stream = self._stream or sys.stdout
        stream.write(json.dumps({"event": event, **fields}) + "\n")
        stream.flush()


def now_ms() -> int:
    return int(time.time() * 1000)


def read_record(out_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((out_dir / RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(out_dir / RECORD_FILE, record)


def _probe(port: ModalPort, call_id: str) -> tuple[str, Any]:
    """("live", None) | ("done", result dict) | ("failed", reason). Unknown means live."""
    try:
        return "done", port.from_id(call_id).get(timeout=0)
    except TimeoutError as err:
        # The SDK raises the builtin TimeoutError, without arguments, while a call has no output yet. (The
        # container never lets a TimeoutError of its own escape: see modal_job.run_in_container.)
        return ("live", None) if not err.args else ("failed", f"TimeoutError: {err}")
    except Exception as err:  # noqa: BLE001 - sorted below: only a known "it is over" means spawn anew
        if call_is_over(err):
            return "failed", f"{type(err).__name__}: {err}"
        return "live", f"could not tell ({type(err).__name__}: {err}); treated as live"


def _install_files(out_dir: Path, files: dict[str, bytes]) -> Path:
    # result.json last: its presence means the folder is complete, as in a local run.
    for rel in sorted(files, key=lambda r: r == "result.json"):
        target = (out_dir / rel).resolve()
        if out_dir.resolve() not in target.parents:
            raise ValueError(f"refusing to write {rel!r} outside {out_dir}")
        atomic_write_bytes(target, files[rel])
    return out_dir / "result.json"


class CallBook:
    """What this (phase, model) knows of its calls: the local launch record, mirrored to the Modal Dict.

    Money: every call's billable window is [the moment its spawn was requested, the moment a launcher saw it
    end + AFTER_END_MS]. Modal bills a container from its start (after the spawn request) to its stop (after
    its idle scale-down), CPU and memory included, so that window is an upper bound of the bill. A call whose
    spawn was never recorded (an orphan: its worker died inside ``spawn``) is dated from the earliest spawn
    request of this (phase, model). The workflow charges each call's window once (workflows/phase-logic.ts).
    """

    def __init__(self, job: Job, port: ModalPort, spec_sha: str, app_id: str) -> None:
        self._job, self._port = job, port
        record = read_record(job.out_dir)
        if record.get("spec_sha256") != spec_sha:
            record = {}
        record.update(phase_id=job.phase_id, model_key=job.model_key, app_id=app_id, spec_sha256=spec_sha)
        record.setdefault("calls", [])
        entry = port.launches.get(job.key)
        self.entry = entry if isinstance(entry, dict) and entry.get("spec_sha256") == spec_sha else None
        firsts = [
            v
            for v in (record.get("first_request_ms"), (self.entry or {}).get("first_request_ms"))
            if isinstance(v, int)
        ]
        if firsts:
            record["first_request_ms"] = min(firsts)
        self.record = record
        self.spec_sha = spec_sha

    def save(self) -> None:
        write_record(self._job.out_dir, self.record)

    def _mirror(self, **fields: Any) -> None:
        entry = {
            "spec_sha256": self.spec_sha,
            "first_request_ms": self.record.get("first_request_ms"),
            **fields,
        }
        self._port.launches.put(self._job.key, entry)

    def spawn_requested(self) -> int:
        """Dates the spawn about to be made, before it is made: an orphan of it is dated from here."""
        at = now_ms()
        self.record.setdefault("first_request_ms", at)
        self.save()
        self._mirror(call_id=(self.entry or {}).get("call_id"), attempt=self._job.attempt)
        return at

    def remember(self, call_id: str, how: str, spawned_at_ms: int | None) -> None:
        spawned_at_ms = spawned_at_ms if spawned_at_ms is not None else self._known_spawn(call_id)
        entry = {
            "call_id": call_id,
            "attempt": self._job.attempt,
            "spec_sha256": self.spec_sha,
            "gpu": self._job.gpu,
            "at": datetime.now(UTC).isoformat(),
            "spawned_at_ms": spawned_at_ms,
        }
        self.record.update(call_id=call_id, status="running", gpu=self._job.gpu)
        if not any(c["call_id"] == call_id for c in self.record["calls"]):
            self.record["calls"] = [*self.record["calls"], {**entry, "how": how}]
        self.save()  # local first: no network between spawn and a durable trace
        self._mirror(**entry)

    def _known_spawn(self, call_id: str) -> int | None:
        for c in [*self.record["calls"], self.entry or {}]:
            if c.get("call_id") == call_id and isinstance(c.get("spawned_at_ms"), int):
                return int(c["spawned_at_ms"])
        return None

    def spawned_at(self, call_id: str) -> int:
        known = self._known_spawn(call_id)
        if known is not None:
            return known
        first = self.record.get("first_request_ms")
        return int(first) if isinstance(first, int) else now_ms()

    def window(self, call_id: str, resource: str = "gpu") -> dict[str, Any]:
        """The call's billable window, as of now (the call was just seen to end, or was just stopped)."""
        return {
            "call_id": call_id,
            "from_ms": self.spawned_at(call_id),
            "to_ms": now_ms() + AFTER_END_MS,
            "resource": resource,
        }

    def known_calls(self) -> list[str]:
        ids = [e.get("call_id") for e in (self.entry, self.record) if isinstance(e, dict)]
        return list(dict.fromkeys(c for c in ids if isinstance(c, str)))


@dataclass(frozen=True)
class Polling:
    poll_s: float = 30.0
    # How long polling may fail on the network before the launcher gives up (exit 1; the retry reattaches).
    unknown_for_s: float = 600.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def _wait(call: CallHandle, emit: Emit, polling: Polling) -> tuple[str, Any]:
    """Waits for a call: ("done", output) or ("over", reason). Polling errors that say nothing about the call
    (the network) are waited out, up to ``unknown_for_s`` in a row; then ("unknown", reason)."""
    poll_s, unknown_for_s, clock, sleep = polling.poll_s, polling.unknown_for_s, polling.clock, polling.sleep
    started, unknown_since = clock(), None
    while True:
        try:
            return "done", call.get(timeout=poll_s)
        except TimeoutError as err:
            if err.args:  # a TimeoutError with a message came from the remote side: the call is over
                return "over", f"TimeoutError: {err}"
            unknown_since = None
            emit("running", call_id=call.object_id, elapsed_s=round(clock() - started, 1))
        except Exception as err:  # noqa: BLE001 - sorted: only a known "it is over" ends the wait
            if call_is_over(err):
                return "over", f"{type(err).__name__}: {err}"
            unknown_since = clock() if unknown_since is None else unknown_since
            why = f"{type(err).__name__}: {err}"
            if clock() - unknown_since > unknown_for_s:
                return (
                    "unknown",
                    f"could not poll the call for {unknown_for_s:.0f} s ({why}); it may still run",
                )
            emit("running", call_id=call.object_id, elapsed_s=round(clock() - started, 1), poll_error=why)
            sleep(min(poll_s, RETRY_POLL_S))  # a failed poll returns at once: try again soon, not busily


def _is_hub_model(spec: dict[str, Any]) -> bool:
    model_id = str(spec.get("model", {}).get("id", ""))
    return not (model_id.startswith(("tiny:", "/", ".")) or model_id == "")


def _prefetch(
    spec: dict[str, Any], port: ModalPort, book: CallBook, emit: Emit, polling: Polling
) -> int | None:
    """Downloads a hub model into the Volume on a CPU container once, before any GPU call of it."""
    model = spec.get("model", {})
    flag = f"prefetched/{model.get('id')}@{model.get('revision') or 'main'}"
    if not _is_hub_model(spec) or port.launches.get(flag):
        return None
    requested = now_ms()
    call = port.prefetch(spec)
    emit("prefetching", call_id=call.object_id, model=model.get("id"))
    state, value = _wait(call, emit, polling)
    window = {
        "call_id": call.object_id,
        "from_ms": requested,
        "to_ms": now_ms() + AFTER_END_MS,
        "resource": "cpu",
    }
    book.record["prefetch_windows"] = [*book.record.get("prefetch_windows", []), window]
    book.save()
    if state == "done" and isinstance(value, dict) and value.get("status") == "ok":
        port.launches.put(flag, {"call_id": call.object_id, "at": datetime.now(UTC).isoformat()})
        emit("prefetched", call_id=call.object_id, windows=[window])
        return None
    invalid = isinstance(value, dict) and value.get("status") == "invalid_spec"
    message = value.get("message") if isinstance(value, dict) else value
    emit(
        "error",
        kind="invalid_spec" if invalid else "failure",
        message=f"downloading the model: {message}",
        call_id=call.object_id,
        windows=[window],
        gpu_seconds=None,
    )
    return EXIT_INVALID if invalid else EXIT_FAILURE


def launch(job: Job, port: ModalPort, emit: Emit, polling: Polling | None = None) -> int:
    spec_text = job.spec_path.read_text()
    spec = json.loads(spec_text)
    spec_sha = hashlib.sha256(spec_text.encode()).hexdigest()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    emit("launching", key=job.key, attempt=job.attempt)
    app_id = port.app_id()
    book = CallBook(job, port, spec_sha, app_id)
    record = book.record
    polling = polling or Polling()

    if record.get("status") == "finished" and (job.out_dir / "result.json").exists():
        # The result arrived before the worker could report it: nothing to run or wait for. Its windows again:
        # the workflow charges a call's window once, however often it is reported.
        emit(
            "finished",
            result=str(job.out_dir / "result.json"),
            gpu_seconds=record.get("gpu_seconds"),
            call_id=record.get("call_id"),
            app_id=app_id,
            reattached=True,
            windows=record.get("windows", []),
        )
        return EXIT_OK

    call: CallHandle | None = None
    queue = book.known_calls()
    probed: set[str] = set()
    while queue and call is None:
        call_id = queue.pop(0)
        if call_id in probed:
            continue
        probed.add(call_id)
        state, value = _probe(port, call_id)
        if state == "done" and isinstance(value, dict) and value.get("status") == "duplicate":
            queue.append(str(value["owner"]))
            continue
        if state == "live" or (state == "done" and isinstance(value, dict) and value.get("status") == "ok"):
            call = port.from_id(call_id)
            if record.get("call_id") != call_id:
                book.remember(call_id, "reattached", None)
            emit("launched", call_id=call_id, app_id=app_id, reattached=True, attempt=job.attempt)
            continue
        reason = value if state == "failed" else (value.get("message") if isinstance(value, dict) else None)
        emit("previous_call", call_id=call_id, state=state, reason=reason)

    reattached = call is not None
    if call is None:
        before = len(book.record.get("prefetch_windows", []))
        failed = _prefetch(spec, port, book, emit, polling)
        if failed is not None:
            return failed
        downloaded = len(book.record.get("prefetch_windows", [])) > before
        # The call, its idle scale-down and its stop must all fit in what this attempt may spend (its limit is
        # what the approval left can pay for): Modal stops the function at its timeout, whatever happens here.
        # A download just made is billed up to its own stop too (at a CPU rate, counted here as if a GPU's).
        margins = 2 if downloaded else 1
        timeout_s = int(job.timeout_s - (time.monotonic() - began) - margins * AFTER_END_MS / 1000)
        if timeout_s < MIN_CALL_S:
            emit(
                "error",
                kind="failure",
                message=f"only {timeout_s} s of this attempt's limit would be left for "
                "the call after its stop margin: not spawned",
                gpu_seconds=None,
                windows=book.record.get("prefetch_windows", []),
            )
            return EXIT_FAILURE
        requested = book.spawn_requested()
        call = port.spawn(
            spec,
            gpu=job.gpu,
            timeout_s=timeout_s,
            cpu_limit=job.cpu_limit,
            memory_limit_mib=job.memory_limit_mib,
        )
        book.remember(call.object_id, "spawned", requested)
        emit("launched", call_id=call.object_id, app_id=app_id, reattached=False, attempt=job.attempt)

    windows: list[dict[str, Any]] = list(record.get("prefetch_windows", []))
    live: CallHandle = call

    def ended(status: str, **fields: Any) -> None:
        windows.append(book.window(live.object_id))
        record.update(status=status, windows=windows, **fields)
        book.save()

    while True:
        live = call
        state, result = _wait(call, emit, polling)
        if state != "done":
            if state == "over":
                ended("failed")
            gpu_seconds = None
            emit(
                "error",
                kind="failure",
                message=f"modal call {call.object_id}: {result}",
                call_id=call.object_id,
                app_id=app_id,
                gpu_seconds=gpu_seconds,
                windows=windows,
            )
            return EXIT_FAILURE
        status = result.get("status") if isinstance(result, dict) else None
        if status == "duplicate":
            # Another call holds this (phase, model) (an orphan of a worker that died right after spawn). Ours
            # ran for the seconds its container took to start: billed, so on the ledger.
            windows.append(book.window(call.object_id))
            owner = str(result["owner"])
            call = port.from_id(owner)
            book.remember(owner, "duplicate-of", None)
            emit("launched", call_id=owner, app_id=app_id, reattached=True, attempt=job.attempt)
            reattached = True
            continue
        gpu_seconds = result.get("gpu_seconds") if isinstance(result, dict) else None
        for c in record["calls"]:
            if c["call_id"] == call.object_id:
                c["gpu_seconds"] = gpu_seconds
        if status == "ok":
            path = _install_files(job.out_dir, dict(result["files"]))
            ended("finished", gpu_seconds=gpu_seconds)
            emit(
                "finished",
                result=str(path),
                gpu_seconds=gpu_seconds,
                call_id=call.object_id,
                app_id=app_id,
                reattached=reattached,
                reused=bool(result.get("reused")),
                windows=windows,
            )
            return EXIT_OK
        ended("failed", gpu_seconds=gpu_seconds)
        message = (
            result.get("message") if isinstance(result, dict) else None
        ) or f"unexpected result {status}"
        kind = "invalid_spec" if status == "invalid_spec" else "failure"
        emit(
            "error",
            kind=kind,
            message=message,
            call_id=call.object_id,
            app_id=app_id,
            gpu_seconds=gpu_seconds,
            windows=windows,
        )
        return EXIT_INVALID if kind == "invalid_spec" else EXIT_FAILURE


def _recorded_calls(port: ModalPort, phase_id: str, model_key: str, out_dir: Path) -> list[str]:
    """Calls named by the Dict entry, the launch record, and the running container's claim.

    The claim finds a call whose launcher was killed before it could record it, once its container has
    started. Window that remains for ``cancel``: a launcher killed while ``spawn`` itself is in flight leaves
    a call that nothing names until its container starts; cancelled before that, it runs (bounded by the
    timeout per attempt), and ``status`` shows it through the claim afterwards.
    """
    entry = port.launches.get(f"{phase_id}/{model_key}")
    ids: list[Any] = [e.get("call_id") for e in (entry, read_record(out_dir)) if isinstance(e, dict)]
    ids.append(claim_call(port.launches.get(claim_key(phase_id, model_key))))
    return list(dict.fromkeys(c for c in ids if isinstance(c, str)))


def _spawned_at(port: ModalPort, phase_id: str, model_key: str, out_dir: Path, call_id: str) -> int:
    """When a call's spawn was requested, as far as anything recorded it (else the earliest request)."""
    record, entry = read_record(out_dir), port.launches.get(f"{phase_id}/{model_key}")
    for c in [*record.get("calls", []), entry if isinstance(entry, dict) else {}]:
        if c.get("call_id") == call_id and isinstance(c.get("spawned_at_ms"), int):
            return int(c["spawned_at_ms"])
    firsts = [v.get("first_request_ms") for v in (record, entry) if isinstance(v, dict)]
    known = [int(v) for v in firsts if isinstance(v, int)]
    return min(known) if known else now_ms()


def cancel(phase_id: str, model_key: str, out_dir: Path, port: ModalPort, emit: Emit) -> int:
    cancelled, windows = [], []
    for call_id in _recorded_calls(port, phase_id, model_key, out_dir):
        if _probe(port, call_id)[0] == "live":
            port.from_id(call_id).cancel()
            cancelled.append(call_id)
            windows.append(
                {
                    "call_id": call_id,
                    "from_ms": _spawned_at(port, phase_id, model_key, out_dir, call_id),
                    "to_ms": now_ms() + AFTER_END_MS,
                    "resource": "gpu",
                }
            )
    record = read_record(out_dir)
    if record and cancelled:
        record.update(status="cancelled")
        write_record(out_dir, record)
    emit("cancelled", call_ids=cancelled, windows=windows)
    return EXIT_OK


def status(phase_id: str, model_key: str, out_dir: Path, port: ModalPort, emit: Emit) -> int:
    calls = {c: _probe(port, c)[0] for c in _recorded_calls(port, phase_id, model_key, out_dir)}
    emit("status", record=read_record(out_dir), calls=calls)
    return EXIT_OK


def check(gpu: str, port: ModalPort, emit: Emit, *, poll_s: float = 5.0, limit_s: float = 900.0) -> int:
    """`phasegate modal check`: one short GPU call (driver, CUDA, torch, the GPU it got) before paying."""
    call = port.smoke(gpu)
    emit("launched", call_id=call.object_id, app_id=port.app_id(), gpu=gpu)
    started = time.monotonic()
    state, value = _wait(call, emit, Polling(poll_s=poll_s, unknown_for_s=limit_s))
    seconds = round(time.monotonic() - started, 1)
    ok = state == "done" and isinstance(value, dict) and value.get("status") == "ok"
    fields = value if isinstance(value, dict) else {"message": value}
    emit("check", ok=ok, seconds=seconds, **{k: v for k, v in fields.items() if k != "status"})
    got = ", ".join(f"{k} {fields.get(k)}" for k in ("gpu", "driver", "cuda", "torch"))
    line = (
        f"modal check {gpu}: ok ({got}; {seconds} s)"
        if ok
        else f"modal check {gpu}: FAILED: {fields.get('message')}"
    )
    print(line, file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILURE


def merged_seconds(windows: list[dict[str, Any]]) -> float:
    """Seconds covered by the windows, each call's overlapping reports counted once."""
    total = 0.0
    by_call: dict[str, list[tuple[int, int]]] = {}
    for w in windows:
        by_call.setdefault(str(w["call_id"]), []).append((int(w["from_ms"]), int(w["to_ms"])))
    for spans in by_call.values():
        end = None
        for a, b in sorted(spans):
            start = a if end is None else max(a, end)
            if b > start:
                total += (b - start) / 1000
            end = b if end is None else max(end, b)
    return total


def read_billing(app_ids: set[str], start: datetime, end: datetime) -> tuple[dict[str, float] | None, str]:
    """Modal's billed USD for these apps over whole hours [start, end), split by resource, or None and why."""
    if not has_credentials():
        return None, "billing could not be read: no Modal credentials on this machine (see docs/modal.md)"
    if os.environ.get("PHASEGATE_MODAL_FAKE"):
        return None, "billing could not be read: the Modal double has no billing report"
    try:
        import modal

        rows = modal.Workspace.from_context().billing.report(start=start, end=end, resolution="h")
    except Exception as err:  # noqa: BLE001 - plan without billing API, network, auth: all reported as such
        return None, f"billing could not be read: {type(err).__name__}: {err}"
    split: dict[str, float] = {}
    for row in rows:
        if row.object_id not in app_ids:
            continue
        for resource, cost in row.cost_by_resource.items():
            split[resource] = split.get(resource, 0.0) + float(cost)
    return split, f"Modal billing report, hourly rows of app {', '.join(sorted(app_ids))}"


def reconcile(phase_dir: Path, protocol_path: Path, emit: Emit, *, now: datetime | None = None) -> int:
    """The phase's ledger bound (its calls' windows) beside Modal's bill, by resource. The bill covers whole
    hours only and lags: a window that is not over yet is labelled incomplete, not compared as if it were."""
    protocol = json.loads(protocol_path.read_text())
    table = json.loads((protocol_path.parent / protocol["pricing"]).read_text())
    container = table.get("modal_container", {})
    rows, all_windows, app_ids = [], [], set()
    for model in protocol["models"]:
        record = read_record(phase_dir / model["key"])
        if record.get("app_id"):
            app_ids.add(str(record["app_id"]))
        windows = [*record.get("windows", []), *record.get("prefetch_windows", [])]
        all_windows += windows
        gpu_s = merged_seconds([w for w in windows if w.get("resource", "gpu") == "gpu"])
        cpu_s = merged_seconds([w for w in windows if w.get("resource") == "cpu"])
        usd = {
            "gpu": gpu_s * float(table["usd_per_second"][model["gpu"]]),
            "cpu": gpu_s
            * float(container.get("cpu_cores", 0))
            * float(container.get("usd_per_core_second", 0))
            + cpu_s * float(table["usd_per_second"].get("cpu", 0)),
            "memory": gpu_s
            * float(container.get("memory_gib", 0))
            * float(container.get("usd_per_gib_second", 0)),
        }
        rows.append(
            {
                "model_key": model["key"],
                "gpu": model["gpu"],
                "calls": sorted({c["call_id"] for c in record.get("calls", [])}),
                "bound_gpu_seconds": round(gpu_s, 1),
                "bound_cpu_only_seconds": round(cpu_s, 1),
                "bound_usd": {k: round(v, 4) for k, v in usd.items()},
            }
        )
    now = now or datetime.now(UTC)
    if not all_windows:
        billed, note, window = None, "billing not read: no Modal call recorded", None
    else:
        start = datetime.fromtimestamp(min(int(w["from_ms"]) for w in all_windows) / 1000, UTC)
        last = datetime.fromtimestamp(max(int(w["to_ms"]) for w in all_windows) / 1000, UTC)
        start = start.replace(minute=0, second=0, microsecond=0)
        end = now.replace(
            minute=0, second=0, microsecond=0
        )  # the report leaves out the current, partial hour
        complete = last <= end
        window = {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "complete": complete,
            "last_call_end": last.isoformat(),
        }
        billed, note = read_billing(app_ids, start, end)
        if not complete:
            note += f"; INCOMPLETE: the phase's calls ran until {last.isoformat()}, after the last whole hour"
        elif (now - last).total_seconds() < 3600:
            note += "; the report may still lag the last hour's usage"
        note += " (other phases of the same app in those hours are included)"
    total_bound = round(sum(sum(r["bound_usd"].values()) for r in rows), 4)
    total = {
        "bound_usd": total_bound,
        "billed_usd": None if billed is None else round(sum(billed.values()), 4),
        "billed_by_resource": billed,
    }
    emit(
        "reconcile",
        phase_dir=str(phase_dir),
        models=rows,
        total=total,
        billing_window=window,
        billing_note=note,
    )
    lines = [f"{'model':<14}{'gpu':<11}{'GPU s':>9}{'GPU $':>10}{'CPU $':>10}{'memory $':>10}"]
    for r in rows:
        u = r["bound_usd"]
        lines.append(
            f"{r['model_key']:<14}{r['gpu']:<11}{r['bound_gpu_seconds']:>9.1f}{u['gpu']:>10.4f}"
            f"{u['cpu']:>10.4f}{u['memory']:>10.4f}"
        )
    billed_text = "n/a" if billed is None else ", ".join(f"{k} {v:.4f}" for k, v in sorted(billed.items()))
    lines.append(f"ledger bound ${total_bound:.4f}; billed: {billed_text}")
    lines.append(note)
    print("\n".join(lines), file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m phasegate_runtime.modal_launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("launch", help="spawn or reattach, wait, copy the results into --out")
    for p in (run, sub.add_parser("status"), sub.add_parser("cancel")):
        p.add_argument("--phase", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--out", required=True, type=Path)
    run.add_argument("--attempt", required=True, type=int)
    run.add_argument("--gpu", required=True)
    run.add_argument("--timeout-minutes", required=True, type=float)
    run.add_argument("--spec", required=True, type=Path)
    run.add_argument("--poll-seconds", type=float, default=30.0)
    run.add_argument("--cpu-limit", type=float, default=Job.cpu_limit, help="physical cores (pricing table)")
    run.add_argument("--memory-limit-mib", type=int, default=Job.memory_limit_mib, help="MiB (pricing table)")
    rec = sub.add_parser("reconcile", help="a phase's ledger bound beside Modal's bill, by resource")
    rec.add_argument("--phase-dir", required=True, type=Path)
    rec.add_argument("--protocol", required=True, type=Path)
    chk = sub.add_parser("check", help="one short GPU call: driver, CUDA, torch, the GPU it got")
    chk.add_argument("--gpu", required=True)
    return parser


def main(argv: list[str] | None = None, port_factory: Callable[[], ModalPort] = make_port) -> int:
    args = build_parser().parse_args(argv)
    emit = Emit()
    if args.command == "reconcile":
        return reconcile(args.phase_dir, args.protocol, emit)
    if not has_credentials():
        emit("error", kind="missing_credentials", message=CREDENTIALS_HELP)
        print(CREDENTIALS_HELP, file=sys.stderr)
        return EXIT_MISSING_CREDENTIALS
    try:
        port = port_factory()
        if args.command == "cancel":
            return cancel(args.phase, args.model, args.out, port, emit)
        if args.command == "status":
            return status(args.phase, args.model, args.out, port, emit)
        if args.command == "check":
            return check(args.gpu, port, emit)
        job = Job(
            phase_id=args.phase,
            model_key=args.model,
            attempt=args.attempt,
            gpu=args.gpu,
            timeout_s=max(10, round(args.timeout_minutes * 60)),
            spec_path=args.spec,
            out_dir=args.out,
            cpu_limit=args.cpu_limit,
            memory_limit_mib=args.memory_limit_mib,
        )
        return launch(job, port, emit, Polling(poll_s=args.poll_seconds))
    except Exception as err:  # noqa: BLE001 - sorted below: configuration errors are final, the rest retryable
        setup = SETUP_ERRORS.get(type(err).__name__)
        if setup is not None:
            # Nothing was launched; no retry can fix this, and each retry would only fail the same way.
            emit("error", kind="missing_credentials", message=f"{setup} ({type(err).__name__}: {err})")
            print(setup, file=sys.stderr)
            return EXIT_MISSING_CREDENTIALS
        emit("error", kind="failure", message=f"{type(err).__name__}: {err}")
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
