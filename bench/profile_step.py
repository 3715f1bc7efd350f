"""Where a protocol unit's time goes, and which part of it is the floor that exact tokens impose.

A diagnostic (tables and a JSON; no pass/fail). Per shape, with the protocol's numerics (``DEFAULT_NUMERICS``)
and deterministic algorithms, on random weights from ``gpu_protocol.py``'s builder, for a hooks-steered unit
watched by the site observer as the runner watches it:

1. the unit in parts, synchronised around each: the direction (contrast forward passes), the prefill, the
   CUDA graph capture (one step's Python + instantiation), the graph replays and the rest of the pass;
2. one decode step replayed from its CUDA graph, watched and unwatched (the site check's cost per step);
3. the GPU kernels of eager decode steps (the same kernels the graph replays), by what they do: the weight
   GEMMs (``nn.Linear``), attention's core, the norms' ATen reductions, compiled (Triton) pieces, the site
   check, and the rest. The weight GEMMs and attention are the kernels transformers' ``generate`` runs too;
   the native cross-check requires the same tokens as it, so these are the floor the fast path cannot go under
   without changing numerics that the proof compares.

``python3 bench/profile_step.py --out $OUT`` (GPU); ``--tiny`` runs the script on the CPU (parts 1 only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_protocol import SHAPES, build, config_of, prompts, shape_arguments, sync  # noqa: E402
from torch import nn  # noqa: E402

from phasegate_runtime import decode as fast  # noqa: E402
from phasegate_runtime import exact_norm, fused, site_check  # noqa: E402
from phasegate_runtime.backend import make_backend  # noqa: E402
from phasegate_runtime.backend_hooks import forward_hook  # noqa: E402
from phasegate_runtime.determinism import configure_determinism, without_nan_fill  # noqa: E402
from phasegate_runtime.direction import compute_direction, steering_delta  # noqa: E402
from phasegate_runtime.generation import decode, make_batches, new_token_ids, stop_token_ids  # noqa: E402
from phasegate_runtime.models import LoadedModel  # noqa: E402
from phasegate_runtime.runner import fast_reads  # noqa: E402
from phasegate_runtime.site import block_hidden, blocks_through, decoder_layers, replace_block_hidden  # noqa: E402

_SITE = "site check"
_NORM = "exact norm"
_CATEGORIES = (
    "weight GEMMs (nn.Linear)",
    "attention core",
    "norm reductions (ATen mean)",
    "compiled pieces (Triton)",
    _SITE,
    "other",
)


class Parts:
    """Synchronised wall time per named part, summed over one unit."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.seconds[name] += time.perf_counter() - started


@contextmanager
def patched(
    owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, wrapper(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def timed_in(parts: Parts, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with parts.part(name):
                return fn(*args, **kwargs)

        return call

    return wrap


def unit_parts(loaded: LoadedModel, data: dict[str, list[str]], layer: int, alpha: float) -> dict[str, float]:
    """One hooks unit as the runner runs it (direction watched, then the steered pass watched), in parts."""
    tok, dev = loaded.tokenizer, loaded.device
    harmful, harmless, evals = (make_batches(tok, data[k], 32, dev) for k in ("harmful", "harmless", "eval"))
    observer = site_check.site_observer(loaded.model)
    backend = make_backend("hooks", loaded)
    config = config_of(loaded, 128 if dev.type == "cuda" else 8)
    stops = stop_token_ids(tok, loaded.model)
    parts = Parts()
    with (
        patched(fast._Decoder, "prefill", timed_in(parts, "pass: prefill")),
        patched(fast, "_capture", timed_in(parts, "pass: capture + instantiate")),
        parts.part("unit"),
    ):
        with (
            parts.part("direction"),
            observer.watch(layer, None, dev, stops_after_site=True),
            fast_reads(loaded.model, layer),
        ):
            direction = compute_direction(backend, harmful, harmless, layer, -1)
        delta = steering_delta(direction.unit, alpha, loaded.dtype, dev)
        rows: list[list[int]] = []
        with parts.part("pass"), observer.watch(layer, delta, dev) as check:
            for batch in evals:
                rows += new_token_ids(
                    backend.steered_generate(batch, layer, delta, config), batch.prompt_len, stops
                )
        with parts.part("record (texts, site check)"):
            decode(tok, rows)
            check[0].to_json()
    out = dict(parts.seconds)
    out["pass: replays and the rest"] = (
        out["pass"] - out.get("pass: prefill", 0.0) - out.get("pass: capture + instantiate", 0.0)
    )
    return out


def kernel_seconds(prof: Any) -> float:
    """The summed duration of the GPU kernels a profile recorded."""
    return sum(float(k.duration) for e in prof.events() for k in getattr(e, "kernels", [])) / 1e6


def read_parts(loaded: LoadedModel, data: dict[str, list[str]], layer: int) -> dict[str, float]:
    """One activation read (hooks, the 32 harmful prompts), median of 5 of each variant, synchronised:
    watched by the site observer through every block (fast reads before they stopped after the site), watched
    as fast units read now (:func:`fast_reads`: through block ``layer`` only, no NaN fill), unwatched,
    unwatched without deterministic mode's NaN fill of new tensors, unwatched through the site only; the
    fingerprint of
    the site's output alone; the GPU time of the unwatched read's kernels (the profiler's sum), against which
    the rest is host time; and the same for a prefill of the eval batch."""
    from torch.profiler import ProfilerActivity, profile

    dev = loaded.device
    (batch,) = make_batches(loaded.tokenizer, data["harmful"], 32, dev)
    backend = make_backend("hooks", loaded)
    observer = site_check.site_observer(loaded.model)

    def read() -> None:
        backend.activations(batch, layer, -1)

    def stopped() -> None:
        with blocks_through(loaded.model, layer):
            read()

    def watched() -> None:
        with observer.watch(layer, None, dev):
            read()

    def watched_fast() -> None:
        with observer.watch(layer, None, dev, stops_after_site=True), fast_reads(loaded.model, layer):
            read()

    def unfilled() -> None:
        with without_nan_fill():
            read()

    hidden = torch.zeros((*batch.input_ids.shape, loaded.hidden_size), dtype=loaded.dtype, device=dev)

    def median_s(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(5):
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    out = {
        "read, watched": median_s(watched),
        "read, watched, as fast units read now": median_s(watched_fast),
        "read, unwatched": median_s(read),
        "read, unwatched, no NaN fill": median_s(unfilled),
        "read, unwatched, through the site only": median_s(stopped),
        "fingerprint of the site's output": median_s(lambda: site_check._fingerprint(hidden)),
    }
    if dev.type == "cuda":
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            read()
            sync()
        out["read, unwatched: GPU kernels"] = kernel_seconds(prof)
        zero = torch.zeros(loaded.hidden_size, dtype=loaded.dtype, device=dev)

        def prefill() -> None:
            with steered_decoder(loaded, data["eval"], layer, zero, watched=False):
                pass

        out["prefill (eval batch, unwatched)"] = median_s(prefill)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prefill()
            sync()
        out["prefill: GPU kernels"] = kernel_seconds(prof)
    return out


@contextmanager
def steered_decoder(
    loaded: LoadedModel, prompts_: list[str], layer: int, delta: torch.Tensor, watched: bool
) -> Iterator[fast._Decoder]:
    """A prefilled decoder of the eval batch with a steering hook on block ``layer`` (and the site observer
    watching, if ``watched``), as inside a hooks unit's generate."""
    (batch,) = make_batches(loaded.tokenizer, prompts_, 32, loaded.device)
    block = decoder_layers(loaded.model)[layer]
    observer = site_check.site_observer(loaded.model)

    def add(_m: nn.Module, _a: Any, output: Any) -> Any:
        return replace_block_hidden(output, block_hidden(output) + delta)

    tok = loaded.tokenizer
    with (
        torch.inference_mode(),
        without_nan_fill(),
        fast._grouped_eager(loaded.model),
        forward_hook(block, add),
        observer.watch(layer, delta, loaded.device) if watched else _nothing(),
    ):
        decoder = fast._Decoder(loaded.model, batch.input_ids, batch.attention_mask, 128, [tok.eos_token_id],
                                tok.pad_token_id)  # fmt: skip
        decoder.prefill(batch.input_ids)
        yield decoder


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def step_ms(fn: Callable[[], object], n: int = 20) -> float:
    """Mean milliseconds of ``fn`` over ``n`` calls after 3 warm-up calls, synchronised."""
    for _ in range(3):
        fn()
    sync()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - started) / n * 1000


def graph_step_ms(
    loaded: LoadedModel, prompts_: list[str], layer: int, delta: torch.Tensor, watched: bool
) -> float:
    """Median over 5 timings of 20 replays of one captured step (the cache has room for 127 steps)."""
    with steered_decoder(loaded, prompts_, layer, delta, watched) as decoder:
        if decoder.shape_key not in fast._WARMED.get(loaded.model, set()):
            fast._warm_up(decoder)
        graph = fast._capture(decoder)
        graph.replay()
        times = [step_ms(graph.replay) for _ in range(5)]  # 1 + 5 x 23 replays: within the 127 steps
    return statistics.median(times)


def labelled(label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Each call inside a profiler range named ``label`` (a Triton launch has no ATen op to hang on)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(label):
                return fn(*args, **kwargs)

        return call

    return wrap


def _category(event: Any, kernel_name: str) -> str:
    names = []
    node = event
    while node is not None:
        names.append(node.name)
        node = node.cpu_parent
    if _SITE in names:  # its compiled kernel too
        return _SITE
    if kernel_name.startswith("triton") or _NORM in names:  # Inductor's kernels, and exact_norm's
        return _CATEGORIES[3]
    if "aten::linear" in names:
        return _CATEGORIES[0]
    attention_ops = ("aten::scaled_dot_product_attention", "aten::matmul", "aten::bmm", "aten::softmax",
                     "aten::_softmax")  # fmt: skip
    if any(n in attention_ops for n in names):
        return _CATEGORIES[1]
    if "aten::mean" in names:
        return _CATEGORIES[2]
    return _CATEGORIES[5]


def kernel_table(
    loaded: LoadedModel, prompts_: list[str], layer: int, delta: torch.Tensor, steps: int = 3
) -> dict[str, Any]:
    """GPU time per category of the kernels of ``steps`` eager decode steps (watched, steered), per step."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    with (
        patched(site_check._Watch, "saw_input", labelled(_SITE)),
        patched(site_check._Watch, "saw_output", labelled(_SITE)),
        patched(exact_norm, "_launch", labelled(_NORM)),
        steered_decoder(loaded, prompts_, layer, delta, watched=True) as decoder,
    ):
        with fused.decode_steps(decoder.fused):
            decoder.step()  # warm
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                decoder.step()
            sync()
    per_category: dict[str, float] = defaultdict(float)
    kernels: dict[str, int] = defaultdict(int)
    names: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    attributed: dict[str, float] = defaultdict(float)
    for event in prof.events():
        for k in getattr(event, "kernels", []):
            category = _category(event, k.name)
            us = float(k.duration)
            attributed[k.name] += us
            per_category[category] += us / steps
            kernels[category] += 1
            names[category][k.name[:90]] += us / steps
    # Kernels the profiler links to no CPU operation (Triton's launcher, e.g. exact_norm's): by name.
    for event in prof.events():
        if event.device_type != DeviceType.CUDA or event.name in (_SITE, _NORM):  # those: GPU-side ranges
            continue
        us = float(event.time_range.end - event.time_range.start)
        if attributed[event.name] >= us - 1e-6:
            attributed[event.name] -= us
            continue
        if event.name.startswith(("triton", "_rms_norm_rows", "_write_rows")):
            category = _CATEGORIES[3]
        elif event.name.startswith(("nvjet", "cublas")) or "gemm" in event.name:
            category = _CATEGORIES[0]
        else:
            category = _CATEGORIES[5]
        per_category[category] += us / steps
        kernels[category] += 1
        names[category][event.name[:90]] += us / steps
    top = {c: dict(sorted(v.items(), key=lambda kv: -kv[1])[:6]) for c, v in names.items()}
    return {
        "us_per_step": {c: per_category.get(c, 0.0) for c in _CATEGORIES},
        "kernels_per_step": {c: kernels.get(c, 0) / steps for c in _CATEGORIES},
        "top_kernels_us_per_step": top,
    }


def bench_shape(shape: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    loaded, info = build(shape, args, device)
    vocab = len(loaded.tokenizer)
    rng = random.Random(7)
    n = 4 if args.tiny else 32
    data = {
        "harmful": prompts(rng, n, vocab, 16, 28),
        "harmless": prompts(rng, n, vocab, 16, 28),
        "eval": prompts(rng, 4 if args.tiny else 30, vocab, 18, 28),
    }
    layer = min(SHAPES[shape]["layer"], loaded.num_layers - 1)
    alpha = float(SHAPES[shape]["alpha"])
    row: dict[str, Any] = {"shape": shape, "weight_bytes": info["weight_bytes"]}
    unit_parts(loaded, data, layer, alpha)  # first unit: compiles, warms up the shape
    runs = [unit_parts(loaded, data, layer, alpha) for _ in range(3)]
    row["unit_parts_s"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    row["read_parts_s"] = read_parts(loaded, data, layer)
    print(f"[{shape}] one read: "
          + ", ".join(f"{k} {v:.4f}s" for k, v in row["read_parts_s"].items()), flush=True)  # fmt: skip
    print(f"[{shape}] unit parts (median of 3): "
          + ", ".join(f"{k} {v:.3f}s" for k, v in row["unit_parts_s"].items()), flush=True)  # fmt: skip
    if device.type == "cuda":
        torch.manual_seed(3)
        unit = torch.randn(loaded.hidden_size)
        delta = steering_delta((unit / unit.norm()).numpy().astype(np.float32), alpha, loaded.dtype, device)
        row["graph_step_ms"] = {
            "watched": graph_step_ms(loaded, data["eval"], layer, delta, watched=True),
            "unwatched": graph_step_ms(loaded, data["eval"], layer, delta, watched=False),
        }
        row["bound_step_ms"] = info["weight_bytes"] / 4.8e12 * 1000
        row |= kernel_table(loaded, data["eval"], layer, delta)
        print(f"[{shape}] graph step {row['graph_step_ms']}, bound {row['bound_step_ms']:.2f} ms", flush=True)
        print(json.dumps(row["us_per_step"], indent=1), flush=True)
    del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | " + " | ".join(rows[0]["unit_parts_s"]) + " |",
             "|---|" + "---|" * len(rows[0]["unit_parts_s"])]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['shape']} | " + " | ".join(f"{v:.3f} s" for v in r["unit_parts_s"].values()) + " |"
        )
    if "us_per_step" in rows[0]:
        lines += ["", "| shape | graph step watched / unwatched | bound | "
                  + " | ".join(_CATEGORIES) + " | kernels (sum) |",
                  "|---|---|---|" + "---|" * (len(_CATEGORIES) + 1)]  # fmt: skip
        for r in rows:
            us = r["us_per_step"]
            step = r["graph_step_ms"]
            lines.append(
                f"| {r['shape']} | {step['watched']:.2f} / {step['unwatched']:.2f} ms "
                f"| {r['bound_step_ms']:.2f} ms | "
                + " | ".join(f"{us[c] / 1000:.2f} ms ({r['kernels_per_step'][c]:.0f})" for c in _CATEGORIES)
                + f" | {sum(us.values()) / 1000:.2f} ms |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    args = parser.parse_args()
    configure_determinism(True)
    device = torch.device("cpu" if args.tiny else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [bench_shape(shape, args, device) for shape in args.shapes]
    (args.out / "profile_step.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (args.out / "profile_step.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
