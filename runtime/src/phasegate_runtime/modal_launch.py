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
from .modal_job import APP_NAME, APP_TAGS, DICT_NAME, FUNCTION_NAME, call_is_over, claim_key

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_MISSING_CREDENTIALS = 0, 1, 2, 3
RECORD_FILE = "modal-launch.json"
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
    def spawn(self, spec: dict[str, Any], *, gpu: str, timeout_s: int) -> CallHandle: ...
    def from_id(self, call_id: str) -> CallHandle: ...


class SdkModal:
    """The real SDK, against the deployed app (``modal deploy -m phasegate_runtime.modal_app``)."""

    def __init__(self) -> None:
        import modal

        self._modal = modal
        self._app_name, self._function_name = APP_NAME, FUNCTION_NAME
        self._launches: Store = modal.Dict.from_name(DICT_NAME, create_if_missing=True)

    @property
    def launches(self) -> Store:
        return self._launches

    def app_id(self) -> str:
        return str(self._modal.App.lookup(self._app_name).app_id)

    def spawn(self, spec: dict[str, Any], *, gpu: str, timeout_s: int) -> CallHandle:
        fn = self._modal.Function.from_name(self._app_name, self._function_name)
        call: CallHandle = fn.with_options(gpu=gpu, timeout=timeout_s).spawn(spec)
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
        # container never lets a TimeoutError of its own escape: see modal_app.run_model.)
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


def launch(
    job: Job,
    port: ModalPort,
    emit: Emit,
    *,
    poll_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    spec_text = job.spec_path.read_text()
    spec = json.loads(spec_text)
    spec_sha = hashlib.sha256(spec_text.encode()).hexdigest()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    emit("launching", key=job.key, attempt=job.attempt)
    app_id = port.app_id()
    record = read_record(job.out_dir)
    if record.get("spec_sha256") != spec_sha:
        record = {}
    record.update(phase_id=job.phase_id, model_key=job.model_key, app_id=app_id, spec_sha256=spec_sha)
    record.setdefault("calls", [])

    if record.get("status") == "finished" and (job.out_dir / "result.json").exists():
        # The result arrived before the worker could report it: nothing to run or wait for.
        emit("finished", result=str(job.out_dir / "result.json"), gpu_seconds=record.get("gpu_seconds"),
             call_id=record.get("call_id"), app_id=app_id, reattached=True)  # fmt: skip
        return EXIT_OK

    def remember(call_id: str, how: str) -> None:
        entry = {"call_id": call_id, "attempt": job.attempt, "spec_sha256": spec_sha, "gpu": job.gpu,
                 "at": datetime.now(UTC).isoformat()}  # fmt: skip
        record.update(call_id=call_id, status="running", gpu=job.gpu)
        record["calls"] = [*record["calls"], {**entry, "how": how}]
        write_record(job.out_dir, record)  # local first: no network between spawn and a durable trace
        port.launches.put(job.key, entry)

    call: CallHandle | None = None
    entry = port.launches.get(job.key)
    candidates = [
        e.get("call_id")
        for e in (entry if isinstance(entry, dict) and entry.get("spec_sha256") == spec_sha else None, record)
        if isinstance(e, dict)
    ]
    queue = list(dict.fromkeys(c for c in candidates if isinstance(c, str)))
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
                remember(call_id, "reattached")
            emit("launched", call_id=call_id, app_id=app_id, reattached=True, attempt=job.attempt)
            continue
        reason = value if state == "failed" else (value.get("message") if isinstance(value, dict) else None)
        emit("previous_call", call_id=call_id, state=state, reason=reason)

    reattached = call is not None
    if call is None:
        call = port.spawn(spec, gpu=job.gpu, timeout_s=job.timeout_s)
        remember(call.object_id, "spawned")
        emit("launched", call_id=call.object_id, app_id=app_id, reattached=False, attempt=job.attempt)

    started = clock()
    while True:
        try:
            result = call.get(timeout=poll_s)
        except TimeoutError as err:
            if err.args:  # a TimeoutError with a message came from the remote side: the call is over
                record.update(status="failed")
                write_record(job.out_dir, record)
                emit("error", kind="failure", message=f"modal call {call.object_id}: TimeoutError: {err}",
                     call_id=call.object_id, app_id=app_id, gpu_seconds=None)  # fmt: skip
                return EXIT_FAILURE
            emit("running", call_id=call.object_id, elapsed_s=round(clock() - started, 1))
            continue
        except Exception as err:  # noqa: BLE001 - a remote failure (timeout, crash, cancel): retryable
            record.update(status="failed")
            write_record(job.out_dir, record)
            emit("error", kind="failure", message=f"modal call {call.object_id}: {type(err).__name__}: {err}",
                 call_id=call.object_id, app_id=app_id, gpu_seconds=None)  # fmt: skip
            return EXIT_FAILURE
        status = result.get("status") if isinstance(result, dict) else None
        if status == "duplicate":
            # Another call holds this (phase, model) (an orphan of a worker that died right after spawn).
            owner = str(result["owner"])
            call = port.from_id(owner)
            remember(owner, "duplicate-of")
            emit("launched", call_id=owner, app_id=app_id, reattached=True, attempt=job.attempt)
            reattached = True
            continue
        gpu_seconds = result.get("gpu_seconds") if isinstance(result, dict) else None
        for c in record["calls"]:
            if c["call_id"] == call.object_id:
                c["gpu_seconds"] = gpu_seconds
        if status == "ok":
            path = _install_files(job.out_dir, dict(result["files"]))
            record.update(status="finished", gpu_seconds=gpu_seconds)
            write_record(job.out_dir, record)
            emit("finished", result=str(path), gpu_seconds=gpu_seconds, call_id=call.object_id, app_id=app_id,
                 reattached=reattached)  # fmt: skip
            return EXIT_OK
        record.update(status="failed", gpu_seconds=gpu_seconds)
        write_record(job.out_dir, record)
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
    ids.append(port.launches.get(claim_key(phase_id, model_key)))
    return list(dict.fromkeys(c for c in ids if isinstance(c, str)))


def cancel(phase_id: str, model_key: str, out_dir: Path, port: ModalPort, emit: Emit) -> int:
    cancelled = []
    for call_id in _recorded_calls(port, phase_id, model_key, out_dir):
        if _probe(port, call_id)[0] == "live":
            port.from_id(call_id).cancel()
            cancelled.append(call_id)
    record = read_record(out_dir)
    if record and cancelled:
        record.update(status="cancelled")
        write_record(out_dir, record)
    emit("cancelled", call_ids=cancelled)
    return EXIT_OK


def status(phase_id: str, model_key: str, out_dir: Path, port: ModalPort, emit: Emit) -> int:
    calls = {c: _probe(port, c)[0] for c in _recorded_calls(port, phase_id, model_key, out_dir)}
    emit("status", record=read_record(out_dir), calls=calls)
    return EXIT_OK


def read_billing(app_tag: dict[str, str], since: datetime) -> tuple[float | None, str]:
    """The app's billed USD since ``since`` (hourly rows), or None and why it could not be read."""
    if not has_credentials():
        return None, "billing could not be read: no Modal credentials on this machine (see docs/modal.md)"
    if os.environ.get("PHASEGATE_MODAL_FAKE"):
        return None, "billing could not be read: the Modal double has no billing report"
    try:
        import modal

        start = since.replace(minute=0, second=0, microsecond=0)
        rows = modal.Workspace.from_context().billing.report(
            start=start, resolution="h", tag_names=list(app_tag)
        )
    except Exception as err:  # noqa: BLE001 - plan without billing API, network, auth: all reported as such
        return None, f"billing could not be read: {type(err).__name__}: {err}"
    mine = [r for r in rows if all(r.tags.get(k) == v for k, v in app_tag.items())]
    note = (
        f"Modal billing report, hourly rows tagged {app_tag} from {start.isoformat()}: the whole app over"
        " those hours (other phases' runs in the same hours included; the current hour is not reported yet)"
    )
    return float(sum(r.cost for r in mine)), note


def reconcile(phase_dir: Path, protocol_path: Path, emit: Emit) -> int:
    protocol = json.loads(protocol_path.read_text())
    pricing = json.loads((protocol_path.parent / protocol["pricing"]).read_text())["usd_per_second"]
    rows, earliest = [], None
    for model in protocol["models"]:
        record = read_record(phase_dir / model["key"])
        calls = {c["call_id"]: c for c in record.get("calls", [])}
        measured = [c["gpu_seconds"] for c in calls.values() if isinstance(c.get("gpu_seconds"), int | float)]
        for c in calls.values():
            at = datetime.fromisoformat(c["at"])
            earliest = at if earliest is None or at < earliest else earliest
        rate = float(pricing[model["gpu"]])
        rows.append({
            "model_key": model["key"], "gpu": model["gpu"], "usd_per_second": rate, "calls": sorted(calls),
            "estimate_seconds": model["expected_gpu_seconds"],
            "estimate_usd": round(model["expected_gpu_seconds"] * rate, 4),
            "measured_seconds": round(sum(measured), 1) if measured else None,
            "measured_usd": round(sum(measured) * rate, 4) if measured else None,
        })  # fmt: skip
    billed, note = (
        read_billing(APP_TAGS, earliest) if earliest else (None, "billing not read: no Modal call recorded")
    )
    total = {
        "estimate_usd": round(sum(r["estimate_usd"] for r in rows), 4),
        "measured_usd": round(sum(r["measured_usd"] or 0 for r in rows), 4),
        "billed_usd": None if billed is None else round(billed, 4),
    }
    emit("reconcile", phase_dir=str(phase_dir), models=rows, total=total, billing_note=note)
    lines = [f"{'model':<14}{'gpu':<11}{'estimate $':>12}{'measured $':>12}{'billed $':>12}"]
    for r in rows:
        measured_usd = "-" if r["measured_usd"] is None else f"{r['measured_usd']:.4f}"
        lines.append(
            f"{r['model_key']:<14}{r['gpu']:<11}{r['estimate_usd']:>12.4f}{measured_usd:>12}{'(app)':>12}"
        )
    billed_text = "n/a" if billed is None else f"{billed:.4f}"
    lines.append(
        f"{'total':<25}{total['estimate_usd']:>12.4f}{total['measured_usd']:>12.4f}{billed_text:>12}"
    )
    lines.append(note)
    print("\n".join(lines), file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m phasegate_runtime.modal_launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
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
    rec = sub.add_parser("reconcile", help="estimate, measured and billed cost of a phase's Modal runs")
    rec.add_argument("--phase-dir", required=True, type=Path)
    rec.add_argument("--protocol", required=True, type=Path)
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
    port = port_factory()
    if args.command == "cancel":
        return cancel(args.phase, args.model, args.out, port, emit)
    if args.command == "status":
        return status(args.phase, args.model, args.out, port, emit)
    job = Job(
        phase_id=args.phase, model_key=args.model, attempt=args.attempt, gpu=args.gpu,
        timeout_s=max(10, round(args.timeout_minutes * 60)), spec_path=args.spec, out_dir=args.out,
    )  # fmt: skip
    try:
        return launch(job, port, emit, poll_s=args.poll_seconds)
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
