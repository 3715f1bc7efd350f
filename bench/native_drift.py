"""Where the fast decoder and transformers' ``generate`` part ways in bf16 (random weights, real shapes).

For each shape, the unsteered eval prompts are decoded by transformers' ``generate`` and by the runtime's
decoder under several numerics settings; per setting: how many rows differ and the first differing step
(median). A diagnostic for the native cross-check (issue 12), not a timing.
``python3 bench/native_drift.py --layers 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
from gpu_protocol import SHAPES, build, config_of, numerics, prompts

from phasegate_runtime import decode as fast
from phasegate_runtime.determinism import configure_determinism
from phasegate_runtime.generation import make_batches

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "fused off": {"fused_kernels": "off"},
    "fused off, graphs off": {"fused_kernels": "off", "cuda_graphs": False},
    "all off": {"fused_kernels": "off", "cuda_graphs": False, "grouped_eager": False},
}


def rows_of(generate: Any, batches: list[Any], config: Any) -> list[list[int]]:
    out: list[list[int]] = []
    with torch.inference_mode():
        for b in batches:
            ids = generate(**b.model_inputs(), generation_config=config)
            out += torch.as_tensor(ids)[:, b.prompt_len :].tolist()
    return out


def margins(
    model: Any, batches: list[Any], config: Any, ours: list[list[int]], hf: list[list[int]]
) -> list[dict[str, Any]]:
    """Per row that parts: ``generate``'s two best scores at the first differing step (float32, after the
    final soft-capping), and whether our token is its second best: a near tie, or a real divergence."""
    out: list[dict[str, Any]] = []
    row = 0
    with torch.inference_mode():
        for b in batches:
            size = int(b.model_inputs()["input_ids"].shape[0])
            rows = range(row, row + size)
            if any(ours[r] != hf[r] for r in rows):
                res = fast.hf_generate(model)(
                    **b.model_inputs(),
                    generation_config=config,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
                for r in rows:
                    if ours[r] == hf[r]:
                        continue
                    step = first_difference(ours[r], hf[r])
                    top = torch.topk(res.scores[step][r - row].float(), 2)
                    out.append({
                        "row": r, "step": step, "generate_top2": top.values.tolist(),
                        "margin": float(top.values[0] - top.values[1]),
                        "ours_is_second": int(top.indices[1]) == ours[r][step],
                    })  # fmt: skip
            row += size
    return out


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    configure_determinism(True)
    device = torch.device("cuda")
    report: dict[str, Any] = {}
    for shape in args.shapes:
        loaded, _ = build(shape, argparse.Namespace(tiny=False, layers=args.layers), device)
        data = prompts(random.Random(7), 30, len(loaded.tokenizer), 18, 28)
        batches = make_batches(loaded.tokenizer, data, 32, loaded.device)
        config = config_of(loaded, args.new_tokens)
        hf = rows_of(fast.hf_generate(loaded.model), batches, config)
        report[shape] = {}
        for name, changes in VARIANTS.items():
            numerics(loaded, **changes)
            ours = rows_of(loaded.model.generate, batches, config)
            differ = [first_difference(a, b) for a, b in zip(ours, hf, strict=True) if a != b]
            report[shape][name] = {
                "rows_differing": len(differ),
                "median_first_difference": statistics.median(differ) if differ else None,
                "at_the_first_difference": margins(loaded.model, batches, config, ours, hf) if differ else [],
            }
            print(shape, name, report[shape][name], flush=True)
        numerics(loaded)
        del loaded
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
