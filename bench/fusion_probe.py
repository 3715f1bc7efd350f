"""Probe: decode-step time with the elementwise work fused in different ways (a diagnostic for issue 6).

Variants, each on a fresh model of the same shape:
  base      the decoder without fused kernels (``PHASEGATE_FUSED=0``; CUDA graph per step)
  pieces    the runtime's default: small pure functions compiled (``phasegate_runtime.fused``)
  regional  torch.compile of every decoder layer's forward instead (hooks stay outside), cache write eager
Prints step time (graph replay), first prefill + step time (compilation), whether graph == eager tokens,
and a kernel profile of two replayed steps.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
from gpu_protocol import SHAPES, build, numerics, prompts  # noqa: E402
from profile_step import step_ms  # noqa: E402

from phasegate_runtime import decode as fast  # noqa: E402
from phasegate_runtime.determinism import without_nan_fill  # noqa: E402
from phasegate_runtime.generation import make_batches  # noqa: E402
from phasegate_runtime.site import decoder_layers  # noqa: E402


def install_regional(model: torch.nn.Module) -> None:
    for layer in decoder_layers(model):
        layer.forward = torch.compile(layer.forward, dynamic=False)


def run_variant(shape: str, variant: str) -> dict[str, Any]:
    torch._dynamo.reset()
    args = argparse.Namespace(tiny=False, layers=0)
    loaded, info = build(shape, args, torch.device("cuda"))
    numerics(loaded, fused_kernels="on" if variant == "pieces" else "off")
    if variant == "regional":
        torch._dynamo.config.cache_size_limit = 256
        fast._StaticLayer.update = torch.compiler.disable(fast._StaticLayer.update)  # type: ignore[method-assign]
        install_regional(loaded.model)
    tok = loaded.tokenizer
    (batch,) = make_batches(tok, prompts(random.Random(1), 30, len(tok), 18, 28), 32, loaded.device)
    out: dict[str, Any] = {"shape": shape, "variant": variant}
    with torch.no_grad(), without_nan_fill(), fast._grouped_eager(loaded.model):
        model = loaded.model

        def decoder() -> fast._Decoder:
            return fast._Decoder(model, batch.input_ids, batch.attention_mask, 128,
                                 [tok.eos_token_id], tok.pad_token_id)  # fmt: skip

        t = time.perf_counter()
        dec = decoder()
        dec.prefill(batch.input_ids)
        dec.step()
        torch.cuda.synchronize()
        out["first_prefill_step_s"] = time.perf_counter() - t
        eager_tokens = []
        for _ in range(20):
            dec.step()
            eager_tokens.append(dec.token.clone())
        out["eager_ms"] = step_ms(dec.step, 10)
        dec = decoder()
        dec.prefill(batch.input_ids)
        dec.step()
        g = fast._capture(dec)  # records the step without running it
        graph_tokens = []
        for _ in range(20):
            g.replay()
            graph_tokens.append(dec.token.clone())
        out["graph_equals_eager"] = bool(torch.equal(torch.cat(eager_tokens, 1), torch.cat(graph_tokens, 1)))
        out["graph_ms"] = step_ms(g.replay)
        out["bound_ms_h200"] = info["weight_bytes"] / 4.8e12 * 1000
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                g.replay()
            torch.cuda.synchronize()
        out["profile"] = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=14, max_name_column_width=60
        )
    del dec, g
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="*", default=list(SHAPES))
    p.add_argument("--variants", nargs="*", default=["base", "pieces", "regional"])
    a = p.parse_args()
    torch.use_deterministic_algorithms(True)
    for shape in a.shapes:
        for variant in a.variants:
            try:
                r = run_variant(shape, variant)
            except Exception as exc:  # noqa: BLE001 - a probe reports and goes on
                print(f"== {shape} {variant}: FAILED {type(exc).__name__}: {str(exc)[:600]}", flush=True)
                continue
            prof = r.pop("profile")
            print(f"== {shape} {variant}: " + ", ".join(f"{k}={v}" for k, v in r.items()), flush=True)
            print(prof, flush=True)


if __name__ == "__main__":
    main()
