"""Command line: ``run``, ``preflight``, ``score`` and ``tiny``; exit codes and signal handling.

Exit codes: 0 success; 2 invalid spec (do not retry); 1 any other failure (retryable);
143 on SIGTERM and 130 on SIGINT. Every non-zero exit also ends stdout with an ``error`` event.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import NoReturn

from .events import EventStream, log
from .spec import TINY_ARCHS, SpecError, load_json, parse_run_spec, parse_score_spec

EXIT_OK, EXIT_FAILURE, EXIT_INVALID_SPEC = 0, 1, 2
_SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Interrupted(BaseException):
    """Raised from the signal handler; BaseException so that per-unit ``except Exception`` never
    swallows it. Checkpoints are atomic, so unwinding mid-unit leaves only complete units on disk."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SpecError("arguments", message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="phasegate-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="one per-model run")
    run.add_argument("--spec", required=True, type=Path)
    run.add_argument("--out", required=True, type=Path)
    check = sub.add_parser(
        "preflight", help="check run specs against their models' configs, no weights (one process a phase)"
    )
    check.add_argument("--spec", required=True, type=Path, action="append", help="repeat for each model")
    score = sub.add_parser("score", help="score result.json files")
    score.add_argument("--spec", required=True, type=Path)
    score.add_argument("--out", required=True, type=Path)
    tiny = sub.add_parser("tiny", help="build and save a tiny random model")
    tiny.add_argument("--arch", required=True, choices=list(TINY_ARCHS))
    tiny.add_argument("--seed", required=True, type=int)
    tiny.add_argument(
        "--out", required=True, type=Path, help="cache dir; model goes to DIR/tiny-<arch>-s<seed>"
    )
    return parser


def _dispatch(args: argparse.Namespace, events: EventStream) -> None:
    if args.command == "run":
        spec = parse_run_spec(load_json(args.spec, "spec"))
        from .runner import run

        run(spec, args.out.resolve(), events)
    elif args.command == "preflight":
        from .preflight import preflight

        # In order, one event each: the first spec without one is the one the error (if any) is about. One
        # process for all the phase's models pays the imports (seconds of CPU) once.
        for path in args.spec:
            spec = parse_run_spec(load_json(path, "spec"))
            found = preflight(spec)
            events.emit(
                "preflight",
                model_key=spec.model_key,
                checked=found.checked,
                num_layers=found.num_layers,
                note=found.note,
            )
    elif args.command == "score":
        score_spec = parse_score_spec(load_json(args.spec, "score spec"))
        from .checkpoint import atomic_write_json
        from .score import score_from_spec

        atomic_write_json(args.out, score_from_spec(score_spec))
        events.emit("score_finished", result=str(args.out))
    else:
        from .tiny import ensure_tiny_model

        path = ensure_tiny_model(args.out.resolve(), args.arch, args.seed)
        events.emit("tiny_saved", path=str(path), arch=args.arch, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    events = EventStream()
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in _SIGNAL_EXIT}
    try:
        _dispatch(build_parser().parse_args(argv), events)
        return EXIT_OK
    except SpecError as err:
        log(f"invalid spec: {err}")
        events.emit("error", kind="invalid_spec", message=str(err), path=err.path)
        return EXIT_INVALID_SPEC
    except Interrupted as err:
        code = _SIGNAL_EXIT[signal.Signals(err.signum)]
        log(f"interrupted by {err}; completed checkpoints are kept")
        events.emit("error", kind="interrupted", message=f"interrupted by {err}")
        sys.stdout.flush()
        sys.stderr.flush()
        # Library worker threads (nnsight) may be parked mid-trace; a normal shutdown would join them.
        os._exit(code)
    except Exception as err:  # noqa: BLE001 - the retryable catch-all of the exit-code contract
        traceback.print_exc(file=sys.stderr)
        events.emit("error", kind="failure", message=f"{type(err).__name__}: {err}")
        return EXIT_FAILURE
    finally:
        # Restored so that an in-process caller (tests, an embedding program) gets its handlers back.
        for signum, handler in previous.items():
            signal.signal(signum, handler)
