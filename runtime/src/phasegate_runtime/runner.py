"""One per-model run: load once, baseline, then every method x repeat, each unit checkpointed.

Units run in a fixed order (``baseline``, then ``<method>/r<k>`` method by method). A unit whose
checkpoint exists for this spec hash is skipped on restart (``unit_skipped``), never recomputed.
A method that raises is recorded as ``ok: false`` with its error and checkpointed like any other unit
(the same inputs would fail again); out-of-memory and interrupts propagate instead, since a retry
with more memory, or simply finishing, can succeed. Delete a unit's JSON to force it to rerun.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backend import Backend, make_backend
from .checkpoint import (
    atomic_write_json,
    atomic_write_npy,
    baseline_file,
    file_problems,
    load_checkpoint,
    native_file,
    record_digest,
    reference_file,
    sha256_file,
    unit_file,
    unit_name,
    unit_stem,
)
from .classify import Label, classify, count_labels
from .decode import native_generate, set_numerics
from .determinism import configure_determinism, determinism_record, seed_everything, without_nan_fill
from .direction import compute_direction, steering_delta
from .events import EventStream, log
from .fused import COMPILE_SECONDS, FAILURES, fused_mode
from .generation import decode, generate_ids, greedy_config, make_batches, new_token_ids, stop_token_ids
from .models import LoadedModel, load_model
from .preflight import check_site
from .reference import reference_direction
from .site import blocks_through
from .site_check import SiteCheck, install_site_observer
from .spec import MethodName, ModelSpec, RunSpec, check_numerics_environment

RESULT_VERSION = 2

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
        "fused_kernels_error": FAILURES[0] if FAILURES else None,
    }


def resolved_numerics(spec: RunSpec, loaded: LoadedModel) -> dict[str, Any]:
    """The spec's numerics as they applied on this device (``fused_kernels``: whether they ran;
    ``fused_mode``: which pieces, ``exact`` or ``all``)."""
    n = spec.numerics
    mode = fused_mode(n.fused_kernels, loaded.device)
    return {
        "decoder": n.decoder,
        "fused_kernels": mode != "off",
        "fused_mode": mode,
        "cuda_graphs": n.cuda_graphs and loaded.device.type == "cuda",
        "grouped_eager": n.grouped_eager,
    }


@contextmanager
def fast_reads(model: torch.nn.Module, layer: int) -> Iterator[None]:
    """How a fast unit's activation reads run: through block ``layer`` only (:func:`.site.blocks_through`),
    without deterministic mode's NaN fill (:func:`.determinism.without_nan_fill`). Neither changes a value
    read (the tests compare them bit for bit); both cut work that no read depends on."""
    with blocks_through(model, layer), without_nan_fill():
        yield


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
        # baseline, reference, every method x repeat, one native cross-check per method
        self.total = 2 + len(self.units) + len(spec.methods)
        self.done = 0

    def _checkpoint_paths(self) -> list[Path]:
        return [
            baseline_file(self.out),
            reference_file(self.out),
            *(unit_file(self.out, m, r) for m, r in self.units),
            *(native_file(self.out, m) for m in self.spec.methods),
        ]

    def _check_existing(self) -> None:
        # Fail on a foreign run directory before spending minutes loading a model.
        for path in self._checkpoint_paths():
            load_checkpoint(path, self.spec_hash)

    def _unit(self, name: str, path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        existing = load_checkpoint(path, self.spec_hash)
        if existing is not None:
            problems = file_problems(self.out, existing)
            if not problems:
                self.done += 1
                self.events.emit(
                    "unit_skipped", unit=name, reason="checkpoint", done=self.done, total=self.total
                )
                return existing
            # Reusing it would freeze whatever the file now holds: computed again instead.
            self.events.emit("unit_invalid", unit=name, problems=problems)
            log(f"[{self.spec.model_key}] {name}: checkpoint not reused: {'; '.join(problems)}")
        self.events.emit("unit_started", unit=name, done=self.done, total=self.total)
        seed_everything(self.spec.seed)
        record = compute()
        record["spec_hash"] = self.spec_hash
        record["record_sha256"] = record_digest(record)
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

    def _write_direction(self, name: str, unit: np.ndarray, files: dict[str, str]) -> str:
        path = self.out / "directions" / f"{name}.npy"
        atomic_write_npy(path, unit)
        rel = str(path.relative_to(self.out))
        files[rel] = sha256_file(path)
        return rel

    def execute(self) -> Path:
        spec = self.spec
        check_numerics_environment(spec.numerics, os.environ)
        configure_determinism(spec.deterministic)
        seed_everything(spec.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_existing()
        started = time.perf_counter()
        compiled_before = COMPILE_SECONDS[0]
        loaded = self.loader(spec.model, spec.cache_dir)
        set_numerics(loaded.model, spec.numerics)
        observer = install_site_observer(loaded.model)
        # The preflight's rules (checked before dispatch), now on the loaded model: invalid specs (exit 2).
        check_site(spec, loaded.num_layers, loaded.tokenizer)
        self.events.emit(
            "model_loaded",
            model_key=spec.model_key,
            resolved_path=loaded.resolved_path,
            load_s=loaded.load_s,
        )
        log(f"[{spec.model_key}] loaded {loaded.resolved_path} in {loaded.load_s:.1f}s")
        tok, dev, bs, layer = loaded.tokenizer, loaded.device, spec.generation.batch_size, spec.site.layer
        eval_batches = make_batches(tok, spec.prompts.eval, bs, dev)
        stop_ids = stop_token_ids(tok, loaded.model)
        config = greedy_config(tok, spec.generation.max_new_tokens, stop_ids)

        def watched(delta: torch.Tensor | None, stops_after_site: bool = False) -> Any:
            return observer.watch(layer, delta, dev, stops_after_site)

        def generate(
            backend: Backend | None, delta: torch.Tensor | None
        ) -> tuple[list[list[int]], SiteCheck]:
            """Token ids per eval prompt (up to the first stop token) and what the site saw meanwhile."""
            rows: list[list[int]] = []
            with watched(delta) as check:
                for batch in eval_batches:
                    if backend is None:
                        ids = generate_ids(loaded.model, batch, config)
                    else:
                        assert delta is not None
                        ids = backend.steered_generate(batch, layer, delta, config)
                    rows += new_token_ids(ids, batch.prompt_len, stop_ids)
            return rows, check[0]

        def baseline() -> dict[str, Any]:
            with timed(dev) as t:
                rows, site = generate(None, None)
            return {
                "outputs": decode(tok, rows),
                "token_ids": rows,
                "site_check": {"unsteered": site.to_json()},
                "wall_s": t.wall_s,
                "gpu_s": t.gpu_s,
            }

        base = self._unit("baseline", baseline_file(self.out), baseline)

        def reference() -> dict[str, Any]:
            record: dict[str, Any] = {"files": {}}
            with timed(dev) as t:
                try:
                    with watched(None) as check:
                        ref = reference_direction(
                            loaded.model, tok, spec.prompts.harmful, spec.prompts.harmless,
                            layer, spec.site.position, bs,
                        )  # fmt: skip
                    record.update(
                        ok=True,
                        error=None,
                        direction_file=self._write_direction("reference", ref.unit, record["files"]),
                        direction_norm_before_normalisation=ref.norm_before_normalisation,
                        site_check={"unsteered": check[0].to_json()},
                    )
                except Exception as err:
                    if isinstance(err, torch.OutOfMemoryError):
                        raise
                    log(f"[{spec.model_key}] reference failed: {err!r}")
                    record.update(ok=False, error=f"{type(err).__name__}: {err}", direction_file=None)
            record.update(wall_s=t.wall_s, gpu_s=t.gpu_s)
            return record

        # Before any method: pyvene removes the hooks transformers records hidden states with.
        ref_unit = self._unit("reference", reference_file(self.out), reference)
        harmful = make_batches(tok, spec.prompts.harmful, bs, dev)
        harmless = make_batches(tok, spec.prompts.harmless, bs, dev)

        def steered_record(rows: list[list[int]]) -> dict[str, Any]:
            texts = decode(tok, rows)
            classes: list[Label] = [
                classify(row, text, base["token_ids"][i], spec.classification)
                for i, (row, text) in enumerate(zip(rows, texts, strict=True))
            ]
            changed = sum(1 for i, row in enumerate(rows) if row != base["token_ids"][i])
            return {
                "outputs": texts,
                "token_ids": rows,
                "classes": classes,
                "counts": count_labels(classes),
                "changed_fraction": changed / len(rows),
            }

        def failed(record: dict[str, Any], err: Exception, name: str) -> None:
            log(f"[{spec.model_key}] {name} failed: {err!r}")
            record.update(
                ok=False,
                error=f"{type(err).__name__}: {err}",
                direction_file=None,
                direction_norm_before_normalisation=None,
                outputs=[],
                token_ids=[],
                classes=[],
                counts=count_labels([]),
                changed_fraction=None,
            )

        def guarded(record: dict[str, Any], name: str, body: Callable[[], None]) -> dict[str, Any]:
            """Runs a unit's ``body``, timed; its failure is recorded in the unit (see module docstring)."""
            with timed(dev) as t:
                try:
                    body()
                except torch.OutOfMemoryError:
                    raise
                except Exception as err:  # noqa: BLE001 - recorded per unit; parity then fails with the reason
                    failed(record, err, name)
            record.update(wall_s=t.wall_s, gpu_s=t.gpu_s)
            return record

        def read_then_steer(
            record: dict[str, Any],
            backend: Backend,
            native: bool,
            stem: str,
            steer_with: np.ndarray | None,
        ) -> None:
            """The direction as ``backend`` reads it, saved as ``stem``; then generation steered by
            ``steer_with`` (a unit vector; None: the direction just read). Both watched at the site. A fast
            unit reads with explicit positions (:func:`fast_reads`); the native cross-check reads as each
            library is normally called, through the whole model."""
            with (
                watched(None, stops_after_site=not native) as reads,
                nullcontext() if native else fast_reads(loaded.model, layer),
            ):
                direction = compute_direction(
                    backend, harmful, harmless, layer, spec.site.position, explicit_positions=not native
                )
            rel = self._write_direction(stem, direction.unit, record["files"])
            unit = direction.unit if steer_with is None else steer_with
            rows, steered = generate(backend, steering_delta(unit, spec.steering.alpha, loaded.dtype, dev))
            record.update(
                ok=True,
                error=None,
                direction_file=rel,
                direction_norm_before_normalisation=direction.norm_before_normalisation,
                site_check={"reads": reads[0].to_json(), "steered": steered.to_json()},
                **steered_record(rows),
            )

        def method_unit(method: MethodName, repeat: int) -> dict[str, Any]:
            record: dict[str, Any] = {"method": method, "repeat": repeat, "files": {}}

            def body() -> None:
                read_then_steer(record, make_backend(method, loaded), False, unit_stem(method, repeat), None)

            return guarded(record, unit_name(method, repeat), body)

        units = [
            self._unit(
                unit_name(m, r),
                unit_file(self.out, m, r),
                lambda m=m, r=r: method_unit(m, r),  # type: ignore[misc]
            )
            for m, r in self.units
        ]
        fast_r0 = {u["method"]: u for u in units if u["repeat"] == 0}

        def native_unit(method: MethodName) -> dict[str, Any]:
            """Repeat 0 again, as the library is normally used: its reads without explicit position ids, its
            generation through its own path on transformers' ``generate``, with the fast unit's delta (so the
            tokens are comparable with that unit's, token for token)."""
            record: dict[str, Any] = {"method": method, "repeat": 0, "files": {}}
            fast = fast_r0[method]

            def body() -> None:
                if not fast["ok"]:
                    raise RuntimeError(f"its fast unit {unit_name(method, 0)} failed")
                fast_path = self.out / fast["direction_file"]
                # The delta it steers with: if repeat 0 is ever computed again, this unit is too.
                record["files"][fast["direction_file"]] = sha256_file(fast_path)
                fast_unit = np.load(fast_path, allow_pickle=False)
                backend = make_backend(method, loaded)
                with native_generate(loaded.model):
                    read_then_steer(record, backend, True, f"native_{method}_read", fast_unit)

            return guarded(record, f"native/{method}", body)

        natives = [
            self._unit(f"native/{m}", native_file(self.out, m), lambda m=m: native_unit(m))  # type: ignore[misc]
            for m in spec.methods
        ]

        def public(unit: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in unit.items() if k != "spec_hash"}

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
            "steering": {
                "alpha": spec.steering.alpha,
                "min_changed_fraction": spec.steering.min_changed_fraction,
            },
            "numerics": resolved_numerics(spec, loaded),
            "stop_token_ids": stop_ids,
            "methods": list(spec.methods),
            "repeats": spec.repeats,
            "n_eval": len(spec.prompts.eval),
            "environment": environment(spec, loaded),
            "baseline": public(base),
            "reference": public(ref_unit),
            "units": [public(u) for u in units],
            "native": [public(u) for u in natives],
            "timings": {
                "load_s": loaded.load_s,
                "baseline_wall_s": base["wall_s"],
                "reference_wall_s": ref_unit["wall_s"],
                "units_wall_s": sum(float(u["wall_s"]) for u in units),
                # The native cross-check, apart: its cost is not the fast path's.
                "native_wall_s": sum(float(u["wall_s"]) for u in natives),
                "process_wall_s": time.perf_counter() - started,
                # From the Python process's own start (interpreter, imports, load, the protocol): what a real
                # run pays end to end; None where /proc cannot tell.
                "since_process_start_s": process_age_s(),
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


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), imports and interpreter start-up included."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
