"""One per-model run: load once, baseline, then every method x repeat, each unit checkpointed.

Units run in a fixed order (``baseline``, then ``<method>/r<k>`` method by method). A unit whose
checkpoint exists for this spec hash is skipped on restart (``unit_skipped``), never recomputed.
A method that raises is recorded as ``ok: false`` with its error and checkpointed like any other unit
(the same inputs would fail again); out-of-memory and interrupts propagate instead, since a retry
with more memory, or simply finishing, can succeed. Delete a unit's JSON to force it to rerun.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .backend import make_backend
from .checkpoint import (
    atomic_write_json,
    atomic_write_npy,
    baseline_file,
    direction_file,
    load_checkpoint,
    unit_file,
    unit_name,
)
from .classify import Label, classify, count_labels
from .determinism import configure_determinism, determinism_record, seed_everything
from .direction import compute_direction, steering_delta
from .events import EventStream, log
from .fused import COMPILE_SECONDS, FAILURES, fused_enabled
from .generation import decode, generate_ids, greedy_config, make_batches, new_token_ids
from .models import LoadedModel, load_model
from .spec import MethodName, ModelSpec, RunSpec, SpecError

RESULT_VERSION = 1

Loader = Callable[[ModelSpec, str], LoadedModel]


@dataclass
class Timing:
    wall_s: float = 0.0
    gpu_s: float | None = None


@contextmanager
def timed(device: torch.device) -> Iterator[Timing]:
    """Wall time always; GPU time from CUDA events on cuda (None elsewhere: there is no GPU clock)."""
    timing = Timing()
    start_evt = end_evt = None
    if device.type == "cuda":
        start_evt = torch.cuda.Event(enable_timing=True)
        end_evt = torch.cuda.Event(enable_timing=True)
        start_evt.record()
    started = time.perf_counter()
    yield timing
    if start_evt is not None and end_evt is not None:
        end_evt.record()
        torch.cuda.synchronize()
        timing.gpu_s = start_evt.elapsed_time(end_evt) / 1000.0
    timing.wall_s = time.perf_counter() - started


def validate_against_model(spec: RunSpec, loaded: LoadedModel) -> None:
    """Spec checks that need the model: still invalid-spec errors (exit 2), not retryable failures."""
    if spec.site.layer >= loaded.num_layers:
        raise SpecError("site.layer", f"must be < num_hidden_layers ({loaded.num_layers})")
    reach = -spec.site.position
    for field in ("harmful", "harmless"):
        for i, prompt in enumerate(getattr(spec.prompts, field)):
            n = len(loaded.tokenizer(prompt)["input_ids"])
            if n < reach:
                raise SpecError(
                    f"prompts.{field}[{i}]",
                    f"has {n} tokens, fewer than site.position ({spec.site.position}) reaches back",
                )


def environment(spec: RunSpec, loaded: LoadedModel) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    device_name = (
        torch.cuda.get_device_name(loaded.device)
        if loaded.device.type == "cuda"
        else (platform.processor() or platform.machine() or "cpu")
    )
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "nnsight": version("nnsight"),
        "pyvene": version("pyvene"),
        "numpy": version("numpy"),
        "device": str(loaded.device),
        "device_name": device_name,
        "determinism": asdict(determinism_record(spec.seed)),
        "fused_kernels": fused_enabled(loaded.device),
        "fused_kernels_error": FAILURES[0] if FAILURES else None,
    }


class Run:
    """``loader`` is :func:`.models.load_model` in every real run; the GPU benchmark passes one that builds
    random weights from a config, so it times exactly this code without a multi-GB download."""

    def __init__(self, spec: RunSpec, out: Path, events: EventStream, loader: Loader = load_model) -> None:
        self.spec = spec
        self.loader = loader
        self.out = out
        self.events = events
        self.spec_hash = spec.hash()
        self.units: list[tuple[MethodName, int]] = [(m, r) for m in spec.methods for r in range(spec.repeats)]
        self.total = 1 + len(self.units)
        self.done = 0

    def _check_existing(self) -> None:
        # Fail on a foreign run directory before spending minutes loading a model.
        load_checkpoint(baseline_file(self.out), self.spec_hash)
        for method, repeat in self.units:
            load_checkpoint(unit_file(self.out, method, repeat), self.spec_hash)

    def _unit(self, name: str, path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        existing = load_checkpoint(path, self.spec_hash)
        if existing is not None:
            self.done += 1
            self.events.emit("unit_skipped", unit=name, reason="checkpoint", done=self.done, total=self.total)
            return existing
        self.events.emit("unit_started", unit=name, done=self.done, total=self.total)
        seed_everything(self.spec.seed)
        record = compute()
        record["spec_hash"] = self.spec_hash
        atomic_write_json(path, record)
        self.done += 1
        self.events.emit(
            "unit_finished",
            unit=name,
            done=self.done,
            total=self.total,
            wall_s=record["wall_s"],
            gpu_s=record["gpu_s"],
        )
        return record

    def execute(self) -> Path:
        spec = self.spec
        configure_determinism(spec.deterministic)
        seed_everything(spec.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_existing()
        started = time.perf_counter()
        compiled_before = COMPILE_SECONDS[0]
        loaded = self.loader(spec.model, spec.cache_dir)
        validate_against_model(spec, loaded)
        self.events.emit(
            "model_loaded",
            model_key=spec.model_key,
            resolved_path=loaded.resolved_path,
            load_s=loaded.load_s,
        )
        log(f"[{spec.model_key}] loaded {loaded.resolved_path} in {loaded.load_s:.1f}s")
        tok, dev, bs = loaded.tokenizer, loaded.device, spec.generation.batch_size
        eval_batches = make_batches(tok, spec.prompts.eval, bs, dev)
        config = greedy_config(tok, spec.generation.max_new_tokens)

        def baseline() -> dict[str, Any]:
            outputs: list[str] = []
            with timed(dev) as t:
                for batch in eval_batches:
                    ids = generate_ids(loaded.model, batch, config)
                    outputs += decode(tok, new_token_ids(ids, batch.prompt_len, tok))
            return {"outputs": outputs, "wall_s": t.wall_s, "gpu_s": t.gpu_s}

        base = self._unit("baseline", baseline_file(self.out), baseline)
        harmful = make_batches(tok, spec.prompts.harmful, bs, dev)
        harmless = make_batches(tok, spec.prompts.harmless, bs, dev)

        def method_unit(method: MethodName, repeat: int) -> dict[str, Any]:
            record: dict[str, Any] = {"method": method, "repeat": repeat}
            rel = direction_file(self.out, method, repeat).relative_to(self.out)
            with timed(dev) as t:
                try:
                    backend = make_backend(method, loaded)
                    direction = compute_direction(
                        backend, harmful, harmless, spec.site.layer, spec.site.position
                    )
                    atomic_write_npy(self.out / rel, direction.unit)
                    delta = steering_delta(direction, spec.steering.alpha, loaded.dtype, dev)
                    outputs: list[str] = []
                    classes: list[Label] = []
                    for batch in eval_batches:
                        ids = backend.steered_generate(batch, spec.site.layer, delta, config)
                        rows = new_token_ids(ids, batch.prompt_len, tok)
                        texts = decode(tok, rows)
                        for row, text in zip(rows, texts, strict=True):
                            baseline_text = base["outputs"][len(outputs)]
                            classes.append(classify(row, text, baseline_text, spec.classification))
                            outputs.append(text)
                    record.update(
                        ok=True,
                        error=None,
                        direction_file=str(rel),
                        direction_norm_before_normalisation=direction.norm_before_normalisation,
                        outputs=outputs,
                        classes=classes,
                        counts=count_labels(classes),
                    )
                except torch.OutOfMemoryError:
                    raise
                except Exception as err:  # noqa: BLE001 - recorded per unit, see module docstring
                    log(f"[{spec.model_key}] {method}/r{repeat} failed: {err!r}")
                    record.update(
                        ok=False,
                        error=f"{type(err).__name__}: {err}",
                        direction_file=None,
                        direction_norm_before_normalisation=None,
                        outputs=[],
                        classes=[],
                        counts=count_labels([]),
                    )
            record.update(wall_s=t.wall_s, gpu_s=t.gpu_s)
            return record

        units = [
            self._unit(
                unit_name(m, r),
                unit_file(self.out, m, r),
                lambda m=m, r=r: method_unit(m, r),  # type: ignore[misc]
            )
            for m, r in self.units
        ]
        result = {
            "result_version": RESULT_VERSION,
            "spec_hash": self.spec_hash,
            "phase_id": spec.phase_id,
            "model_key": spec.model_key,
            "model": {
                "id": spec.model.id,
                "resolved_path": loaded.resolved_path,
                "revision": spec.model.revision,
                "dtype": spec.model.dtype,
                "device": str(loaded.device),
                "attn_implementation": loaded.attn_implementation,
                "num_layers": loaded.num_layers,
                "hidden_size": loaded.hidden_size,
            },
            "site": {"layer": spec.site.layer, "position": spec.site.position},
            "steering": {"alpha": spec.steering.alpha},
            "methods": list(spec.methods),
            "repeats": spec.repeats,
            "n_eval": len(spec.prompts.eval),
            "environment": environment(spec, loaded),
            "baseline": {"outputs": base["outputs"], "wall_s": base["wall_s"], "gpu_s": base["gpu_s"]},
            "units": [{k: v for k, v in u.items() if k != "spec_hash"} for u in units],
            "timings": {
                "load_s": loaded.load_s,
                "baseline_wall_s": base["wall_s"],
                "units_wall_s": sum(float(u["wall_s"]) for u in units),
                "process_wall_s": time.perf_counter() - started,
                # One-time compilation of the fused decode kernels, inside the first unit that decoded.
                "compile_s": COMPILE_SECONDS[0] - compiled_before,
            },
        }
        path = self.out / "result.json"
        atomic_write_json(path, result)
        self.events.emit("run_finished", result=str(path), done=self.total, total=self.total)
        return path


def run(spec: RunSpec, out: Path, events: EventStream, loader: Loader = load_model) -> Path:
    return Run(spec, out, events, loader).execute()
