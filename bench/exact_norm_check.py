"""The exact RMSNorm kernel (runtime ``exact_norm.py``) against ATen on the GPU: bits and time.

For each shape (rows x hidden), dtype, magnitude and draw: the kernel's float32 mean of squares against
``x.float().pow(2).mean(-1)`` (ATen), and the whole norm against transformers' operations run eagerly (the
mean by ATen, then the pointwise rest), counting elements that differ in any bit. Then the time of one norm:
ATen's kernels (cast, square, mean, the rest eagerly) against the kernel, each in a CUDA graph of 200 calls.

``python3 bench/exact_norm_check.py --out $OUT`` (GPU only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "src"))

import torch  # noqa: E402

from phasegate_runtime import exact_norm, fused  # noqa: E402

ROWS = (30, 16, 32, 64, 840)
# The protocol's shapes (3584), others' (4096, 2304, 896), the widest supported (8160) and widths whose last
# pass over a row only some lanes fill (1000, 3000), and the narrowest (128).
HIDDENS = (3584, 4096, 2304, 896, 8160, 1000, 3000, 128)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAGNITUDES = (1e-3, 0.1, 1.0, 10.0, 100.0)


def aten_norm(x: torch.Tensor, w: torch.Tensor, unit_offset: bool) -> torch.Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    tail = fused._unit_offset_scale if unit_offset else fused._rms_scale
    return tail(x, variance, w, 1e-6)


def kernel_norm(x: torch.Tensor, w: torch.Tensor, unit_offset: bool) -> torch.Tensor:
    fn = exact_norm.rms_norm_unit_offset if unit_offset else exact_norm.rms_norm
    return fn(x, w, 1e-6)


def graph_us(fn: Callable[[], Any], calls: int = 200) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) * 1000 / (5 * calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--hiddens", type=int, nargs="+", default=list(HIDDENS))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows_out: list[dict[str, Any]] = []
    for hidden in args.hiddens:
        for rows in ROWS:
            for dtype in DTYPES:
                checked = mean_diff = norm_diff = 0
                for magnitude in MAGNITUDES:
                    for _ in range(args.draws):
                        x = (torch.randn(rows, 1, hidden, device="cuda", generator=generator) * magnitude).to(
                            dtype
                        )
                        w = (torch.randn(hidden, device="cuda", generator=generator) * 0.5).to(dtype)
                        assert exact_norm.supports(x, w)
                        aten_mean = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
                        mean_diff += int((exact_norm.mean_of_squares(x, w).view(torch.int32)
                                          != aten_mean.view(torch.int32)).sum())  # fmt: skip
                        for unit_offset in (False, True):
                            a, k = aten_norm(x, w, unit_offset), kernel_norm(x, w, unit_offset)
                            bits = torch.int16 if dtype != torch.float32 else torch.int32
                            norm_diff += int((a.view(bits) != k.view(bits)).sum())
                        checked += rows * hidden
                row = {"rows": rows, "hidden": hidden, "dtype": str(dtype), "elements_per_kind": checked,
                       # the runtime's own first-use comparison (it would decline the kernel if False)
                       "agrees_with_aten": exact_norm.agrees_with_aten(hidden, dtype, x.device),
                       "mean_rows_differing": mean_diff, "norm_elements_differing": norm_diff}  # fmt: skip
                rows_out.append(row)
                print(json.dumps(row), flush=True)
    timing = []
    for hidden in (3584,):
        x = torch.randn(30, 1, hidden, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
        for unit_offset in (False, True):
            t = {"hidden": hidden, "rows": 30, "unit_offset": unit_offset,
                 "aten_us": graph_us(lambda: aten_norm(x, w, unit_offset)),  # noqa: B023
                 "kernel_us": graph_us(lambda: kernel_norm(x, w, unit_offset)),  # noqa: B023
                 "aten_mean_only_us": graph_us(lambda: x.to(torch.float32).pow(2).mean(-1, keepdim=True))}  # noqa: B023  # fmt: skip
            timing.append(t)
            print(json.dumps(t), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    total = sum(r["mean_rows_differing"] + r["norm_elements_differing"] for r in rows_out)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "exactness": rows_out,
              "timing": timing, "differing_total": total}  # fmt: skip
    (args.out / "exact_norm_check.json").write_text(json.dumps(result, indent=1))
    print(f"differing in total: {total}")


if __name__ == "__main__":
    main()
