"""Where a decode step's time goes: per-kernel GPU time of one eager step, and step time per variant.

Runs after ``gpu_protocol.py``'s shapes are known to build; prints tables only (a diagnostic, not a result).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import random  # noqa: E402

import torch  # noqa: E402
from gpu_protocol import SHAPES, build, prompts  # noqa: E402

from phasegate_runtime import decode as fast  # noqa: E402
from phasegate_runtime.generation import make_batches  # noqa: E402


def step_ms(fn: Callable[[], object], n: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    torch.use_deterministic_algorithms(True)
    for shape in sys.argv[1:] or list(SHAPES):
        args = argparse.Namespace(tiny=False, layers=0)
        loaded, info = build(shape, args, torch.device("cuda"))
        tok = loaded.tokenizer
        (batch,) = make_batches(tok, prompts(random.Random(1), 30, len(tok), 18, 28), 32, loaded.device)
        with torch.no_grad(), fast._deterministic_without_checks():
            dec = fast._Decoder(
                loaded.model, batch.input_ids, batch.attention_mask, 400, [tok.eos_token_id], tok.pad_token_id
            )
            dec.prefill(batch.input_ids)
            eager = step_ms(dec.step)
            g = fast._capture(dec)
            graph = step_ms(g.replay)
            torch.use_deterministic_algorithms(False)
            dec2 = fast._Decoder(
                loaded.model, batch.input_ids, batch.attention_mask, 400, [tok.eos_token_id], tok.pad_token_id
            )
            dec2.prefill(batch.input_ids)
            dec2.step()
            g2 = fast._capture(dec2)
            graph_nondet = step_ms(g2.replay)
            torch.use_deterministic_algorithms(True)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    dec.step()
                torch.cuda.synchronize()
        bound = info["weight_bytes"] / 4.8e12 * 1000
        print(
            f"== {shape}: eager step {eager:.2f} ms, graph {graph:.2f} ms, "
            f"graph nondet {graph_nondet:.2f} ms, "
            f"bound(H200 sheet) {bound:.2f} ms"
        )
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
        del loaded, dec, dec2, g, g2
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
