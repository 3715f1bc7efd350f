"""What other GEMM kernels would buy: the measurement behind the decision that issue 16's item 1 waits on.

A diagnostic (tables and a JSON; no pass/fail). The fast path decodes with the weight GEMMs transformers'
``generate`` runs (cuBLAS), because the native cross-check compares its tokens with ``generate``'s, token for
token. Per shape, on random weights from ``gpu_protocol.py``'s builder, one decode step's weight GEMMs (every
``nn.Linear`` of the model, 32 rows each, as a step of the protocol's batch computes them) are timed two ways,
each as one CUDA graph replayed:

1. ``cublas``: ``torch.nn.functional.linear``, what the fast path and ``generate`` run;
2. ``autotuned``: the same products compiled by Inductor with ``max-autotune`` (it benchmarks its Triton GEMM
   templates against ATen per shape and keeps the fastest), the kind of kernel a fast path free of the
   cross-check's constraint could use.

Beside them: the weight-read bound of those GEMMs (weight bytes / datasheet bandwidth), and per distinct shape
the fraction of output elements whose bits equal cuBLAS's (where it is below 1, tokens can part from
``generate``'s at near ties). The saving per step times the protocol's 2,032 decode steps is what the fast
path would gain from these kernels alone.

``python3 bench/gemm_alternatives.py --out $OUT`` (GPU); ``--tiny`` runs the script on the CPU (no
autotuning).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from gpu_protocol import DATASHEET_BW, build, shape_arguments, sync  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

ROWS = 32  # the protocol's batch: one row per eval prompt in a decode step
STEPS_PER_PROTOCOL = 16 * 127  # 16 generation passes x 127 decode steps


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def step_time_s(calls: list[Callable[[], torch.Tensor]], replays: int) -> float:
    """Median seconds of one replay of a CUDA graph holding every call once (on the CPU: eager, timed)."""
    if not torch.cuda.is_available():
        for call in calls:  # warm-up
            call()
        started = time.perf_counter()
        for call in calls:
            call()
        return time.perf_counter() - started
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # warm-up outside the capture (autotuning, workspace allocation)
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return float(sorted(times)[len(times) // 2])


def bench_shape(shape: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    loaded, info = build(shape, args, device)
    layers = linears(loaded.model)
    dtype = loaded.dtype
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = {
        n: torch.randn(ROWS, n, generator=gen, device=device, dtype=dtype)
        for n in sorted({m.in_features for m in layers})
    }
    linear = torch.compile(
        F.linear, mode=None if args.tiny else "max-autotune-no-cudagraphs", dynamic=False, fullgraph=True
    )
    torch._dynamo.config.cache_size_limit = 64  # one compiled product per distinct GEMM shape

    def call(m: nn.Linear, fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: fn(inputs[m.in_features], m.weight, m.bias)

    with torch.inference_mode():
        started = time.perf_counter()
        # Autotune each distinct shape once, and compare its bits with cuBLAS's there.
        by_shape: dict[tuple[int, int, bool], dict[str, Any]] = {}
        for m in layers:
            key = (m.in_features, m.out_features, m.bias is not None)
            if key in by_shape:
                by_shape[key]["count"] += 1
                continue
            x = inputs[m.in_features]
            ref, alt = F.linear(x, m.weight, m.bias), linear(x, m.weight, m.bias)
            by_shape[key] = {
                "in": key[0], "out": key[1], "bias": key[2], "count": 1,
                "bits_equal_fraction": float((ref.view(torch.int16) == alt.view(torch.int16)).float().mean())
                if dtype == torch.bfloat16 else float((ref == alt).float().mean()),
                "max_abs_difference": float((ref.float() - alt.float()).abs().max()),
            }  # fmt: skip
        tune_s = time.perf_counter() - started
        cublas_s = step_time_s([call(m, F.linear) for m in layers], args.replays)
        tuned_s = step_time_s([call(m, linear) for m in layers], args.replays)
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    bw = next((b for name, b in DATASHEET_BW.items() if name in gpu), None)
    row = {
        "shape": shape, "gpu": gpu, "linears": len(layers), "weight_bytes": weight_bytes,
        "model_weight_bytes": info["weight_bytes"],
        "cublas_step_s": cublas_s, "autotuned_step_s": tuned_s,
        "bound_step_s": weight_bytes / bw if bw else None,
        "saving_per_protocol_s": (cublas_s - tuned_s) * STEPS_PER_PROTOCOL,
        "autotune_s": tune_s, "shapes": list(by_shape.values()),
    }  # fmt: skip
    del loaded, layers
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Weight GEMMs of one decode step ({ROWS} rows), each way one CUDA graph; saving x "
        f"{STEPS_PER_PROTOCOL} steps of the protocol.",
        "",
        "| shape | GPU | cuBLAS (generate's) | autotuned (Inductor max-autotune) | bound (datasheet) "
        "| saving over the protocol | output bits equal to cuBLAS, per GEMM shape |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = f"{r['bound_step_s'] * 1e3:.2f} ms" if r["bound_step_s"] else "n/a"
        equal = ", ".join(
            f"{s['in']}->{s['out']}{' +bias' if s['bias'] else ''}: {s['bits_equal_fraction']:.3f}"
            for s in r["shapes"]
        )
        lines.append(
            f"| {r['shape']} | {r['gpu']} | {r['cublas_step_s'] * 1e3:.2f} ms "
            f"| {r['autotuned_step_s'] * 1e3:.2f} ms | {bound} "
            f"| {r['saving_per_protocol_s']:.2f} s | {equal} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(parser)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        rows.append(bench_shape(shape, args, device))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "shapes"}), flush=True)
        sync()
    summary = {"rows": rows, "args": vars(args) | {"out": str(args.out)}}
    (args.out / "gemm_alternatives.json").write_text(json.dumps(summary, indent=1))
    (args.out / "gemm_alternatives.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
