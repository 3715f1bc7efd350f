"""A picture of ``gpu_protocol.json``: protocol seconds per model shape, per way of generating, log scale.

    python3 bench/chart.py RESULTS/gpu_protocol.json RESULTS/protocol.svg

Plain SVG, no plotting library: the bars are few and the file diffs well.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fast_path_s(row: dict[str, Any]) -> float:
    """The fast path of a model row: the baseline unit and every method x repeat unit of the real Run (the 16
    generation passes the bound counts, with their directions); the native cross-check and the reference
    are the proof's, apart."""
    return float(row["baseline_s"]) + sum(sum(v) for v in row["unit_s"].values())


# (value of a model row, label, colour); the label says which numbers are estimates.
ROWS: tuple[tuple[Callable[[dict[str, Any]], Any], str, str], ...] = (
    (lambda m: m.get("naive_protocol_s_extrapolated"), "per-prompt loop (extrapolated)", "#b0b0b0"),
    (lambda m: m.get("hf_batched_protocol_s_estimated"), "transformers batched generate (x16, estimated)",
     "#8da0cb"),
    (lambda m: m.get("runtime_total_s"), "phasegate runtime, whole Run with its proof", "#1b9e77"),
    (fast_path_s, "phasegate fast path (baseline + method units)", "#66a61e"),
    (lambda m: m.get("bound_protocol_s_datasheet"), "weight-read bound (datasheet bandwidth)", "#fc8d62"),
)  # fmt: skip
LEFT, BAR_W, BAR_H, GAP = 300, 420, 16, 4


def _x(seconds: float, lo: float, hi: float) -> float:
    return LEFT + BAR_W * (math.log10(seconds) - lo) / (hi - lo)


def svg(summary: dict[str, Any]) -> str:
    models = summary["models"]
    values = [float(value(m)) for m in models for value, _, _ in ROWS if value(m)]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    height = 60 + len(models) * (len(ROWS) * (BAR_H + GAP) + 30) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + BAR_W + 90}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">Phase-1 protocol per model on '
        f"{summary['device']}: seconds (log scale)</text>",
        '<text x="10" y="38" fill="#555">16 generation passes of 30 prompts x 128 tokens + directions; '
        "random bf16 weights</text>",
    ]
    y = 60
    for m in models:
        out.append(f'<text x="10" y="{y + 12}" font-weight="bold">{m["shape"]}</text>')
        y += 20
        for value_of, label, colour in ROWS:
            value = value_of(m)
            if not value:
                continue
            end = _x(float(value), lo, hi)
            out.append(f'<text x="{LEFT - 6}" y="{y + 12}" text-anchor="end">{label}</text>')
            width = end - LEFT
            out.append(f'<rect x="{LEFT}" y="{y}" width="{width:.1f}" height="{BAR_H}" fill="{colour}"/>')
            out.append(f'<text x="{end + 4:.1f}" y="{y + 12}">{float(value):,.1f} s</text>')
            y += BAR_H + GAP
        y += 10
    grid = []
    for power in range(lo, hi + 1):
        x = _x(10.0**power, lo, hi)
        grid.append(f'<line x1="{x:.1f}" y1="55" x2="{x:.1f}" y2="{y}" stroke="#ddd"/>')
        tick = f"{10.0**power:g} s"
        grid.append(f'<text x="{x:.1f}" y="{y + 14}" text-anchor="middle" fill="#555">{tick}</text>')
    out[3:3] = grid  # under the bars
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.write_text(svg(json.loads(source.read_text())))


if __name__ == "__main__":
    main()
