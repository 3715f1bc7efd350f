"""Which fused decode-step kernels are bit-exact with eager on the GPU, and which change tokens (issue 16).

The protocol's ``numerics.fused_kernels`` defaults to ``exact``, not to every piece, because all the pieces
in ``phasegate_runtime/fused.py`` compiled changed tokens against transformers' ``generate`` (Qwen2.5-7B).
Part 1 compares each piece compiled (as the decoder runs it: Inductor, deterministic,
``emulate_precision_casts``) with the same function run eagerly, bit for bit, on random bf16 inputs of the
real shapes at several magnitudes. Part 2 decodes the eval prompts of ``native_drift.py`` with one kind of
piece fused at a time and counts the rows that part from ``generate``, with each pass's time (Gemma's grouped
attention is compiled whenever anything is fused: the decoder calls it directly), and the runtime's
``exact`` mode (each norm's reduction left to ATen and its pointwise rest compiled, the gated MLPs and rotary;
attention eager), with its norms alone as ``norm-split``. A diagnostic, not a gate:
``python3 bench/fusion_exactness.py --out $OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
from gpu_protocol import SHAPES, build, config_of, numerics, prompts
from native_drift import first_difference, rows_of

from phasegate_runtime import decode as fast
from phasegate_runtime import fused
from phasegate_runtime.determinism import configure_determinism
from phasegate_runtime.generation import make_batches

BATCH = 30
MAGNITUDES = (0.1, 1.0, 10.0, 100.0)


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn.__wrapped__  # type: ignore[attr-defined,no-any-return]


def _mismatch(a: Any, b: Any) -> tuple[int, int]:
    """Elements that differ in any bit, and how many were compared (tuples: summed)."""
    if isinstance(a, tuple):
        pairs = [_mismatch(x, y) for x, y in zip(a, b, strict=True)]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return int((a.view(torch.int16) != b.view(torch.int16)).sum()), a.numel()


Case = tuple[Callable[..., Any], tuple[Any, ...]]


def piece_inputs(shape: str, piece: str, scale: float, gen: torch.Generator) -> Case:
    """One decode step's inputs for ``piece`` at the shape's sizes (batch 30, one new token)."""
    c = SHAPES[shape]["config"]
    hidden, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    heads, kv = int(c["num_attention_heads"]), int(c["num_key_value_heads"])
    dim = int(c.get("head_dim", hidden // heads))
    dev, bf = torch.device("cuda"), torch.bfloat16

    def r(*size: int, s: float = scale) -> torch.Tensor:
        return (torch.randn(*size, generator=gen, device=dev) * s).to(bf)

    gemma = SHAPES[shape]["arch"] == "gemma2"
    if piece in ("norm", "norm-split"):
        fn = fused.rms_norm_unit_offset if gemma else fused.rms_norm
        return fn, (r(BATCH, 1, hidden), r(hidden, s=0.5), 1e-6)
    if piece == "mlp":
        fn = fused.gelu_tanh_gate if gemma else fused.silu_gate
        return fn, (r(BATCH, 1, inter), r(BATCH, 1, inter))
    if piece == "rotary":
        pos = torch.randint(18, 160, (BATCH, 1), generator=gen, device=dev).float()
        theta = float(c.get("rope_theta", 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=dev).float() / dim))
        freqs = torch.cat([pos[..., None] * inv, pos[..., None] * inv], dim=-1)
        cos, sin = freqs.cos().to(bf), freqs.sin().to(bf)
        return fused.rotary, (r(BATCH, heads, 1, dim), r(BATCH, kv, 1, dim), cos, sin)
    if piece == "attention":
        cache = 160
        mask = torch.zeros(BATCH, 1, 1, cache, device=dev, dtype=bf)
        mask[:, :, :, 150:] = torch.finfo(bf).min
        softcap = c.get("attn_logit_softcapping")
        scaling = float(c.get("query_pre_attn_scalar", dim)) ** -0.5
        keys, values = r(BATCH, kv, cache, dim), r(BATCH, kv, cache, dim)
        return fused.grouped_attention, (r(BATCH, heads, 1, dim), keys, values, mask, scaling, softcap)
    if piece == "scores":  # exact mode's compiled part of attention: scale, soft-cap, mask
        cache = 160
        mask = torch.zeros(BATCH, 1, 1, cache, device=dev, dtype=bf)
        mask[:, :, :, 150:] = torch.finfo(bf).min
        softcap = c.get("attn_logit_softcapping")
        scaling = float(c.get("query_pre_attn_scalar", dim)) ** -0.5
        return fused.attention_scores, (r(BATCH, heads, 1, cache, s=scale * dim**0.5), mask, scaling, softcap)
    raise ValueError(piece)


def part1(shape: str, draws: int) -> dict[str, Any]:
    pieces = ["norm", "norm-split", "mlp", "rotary"]
    pieces += ["attention", "scores"] if SHAPES[shape]["attn"] == "eager" else []
    out: dict[str, Any] = {}
    gen = torch.Generator(device="cuda").manual_seed(1234)
    for piece in pieces:
        per_scale: dict[str, Any] = {}
        for scale in MAGNITUDES:
            bad = total = draws_differing = 0
            for _ in range(draws):
                fn, args = piece_inputs(shape, piece, scale, gen)
                with torch.inference_mode():
                    want = _eager(fn)(*args)
                    if piece == "norm-split":  # the runtime's exact mode: ATen's reduction, compiled rest
                        with fused.decode_steps("exact"):
                            got = _SPLIT[fn](*args)
                    else:
                        got = fused._run_compiled(_eager(fn), *args)
                b, n = _mismatch(got, want)
                bad, total, draws_differing = bad + b, total + n, draws_differing + (b > 0)
            per_scale[str(scale)] = {
                "elements_differing": bad,
                "elements": total,
                "draws_differing": draws_differing,
            }
        out[piece] = per_scale
        print(shape, piece, per_scale, flush=True)
    return out


_SPLIT = {fused.rms_norm: fused.rms_norm_split, fused.rms_norm_unit_offset: fused.rms_norm_unit_offset_split}
# Kinds of part 2: what is fused. "norm-split" and "exact" are the runtime's ``exact`` mode (each norm's
# reduction left to ATen, its pointwise rest compiled; attention eager): norms alone, then with MLPs and
# rotary.
KINDS = ("off", "norm", "mlp", "rotary", "all", "norm-split", "exact")


def _only(kind: str) -> None:
    """Fuse only ``kind`` in the models built next (the process-wide rotary swap is undone if excluded)."""
    fused._NORMS = dict(_ALL_NORMS) if kind in ("norm", "all", "norm-split", "exact") else {}
    fused._MLPS = _ALL_MLPS if kind in ("mlp", "all", "exact") else ()
    fused._ROTARY_MODEL_TYPES = _ALL_ROTARY if kind in ("rotary", "all", "exact") else ()
    for arch in _ALL_ROTARY:
        modeling = sys.modules.get(f"transformers.models.{arch}.modeling_{arch}")
        current = getattr(modeling, "apply_rotary_pos_emb", None)
        if modeling is not None and getattr(current, fused._PATCHED, False):
            modeling.apply_rotary_pos_emb = current.__wrapped__  # type: ignore[attr-defined,union-attr]


_ALL_NORMS, _ALL_MLPS, _ALL_ROTARY = dict(fused._NORMS), fused._MLPS, fused._ROTARY_MODEL_TYPES


def part2(shape: str, layers: int, new_tokens: int, kinds: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hf: list[list[int]] | None = None
    for kind in kinds:
        _only(kind)
        loaded, _ = build(shape, argparse.Namespace(tiny=False, layers=layers), torch.device("cuda"))
        data = prompts(random.Random(7), 30, len(loaded.tokenizer), 18, 28)
        batches = make_batches(loaded.tokenizer, data, 32, loaded.device)
        config = config_of(loaded, new_tokens)
        if hf is None:
            hf = rows_of(fast.hf_generate(loaded.model), batches, config)
        setting = {"off": "off", "norm-split": "exact", "exact": "exact"}.get(kind, "on")
        numerics(loaded, fused_kernels=setting)
        rows_of(loaded.model.generate, batches, config)  # compile and warm up
        torch.cuda.synchronize()
        started = time.perf_counter()
        ours = rows_of(loaded.model.generate, batches, config)
        torch.cuda.synchronize()
        pass_s = time.perf_counter() - started
        differ = [first_difference(a, b) for a, b in zip(ours, hf, strict=True) if a != b]
        out[kind] = {
            "rows_differing": len(differ),
            "median_first_difference": statistics.median(differ) if differ else None,
            "pass_s": pass_s,
        }
        print(shape, f"fused: {kind}", out[kind], flush=True)
        del loaded
        torch.cuda.empty_cache()
    _only("all")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--draws", type=int, default=10, help="random inputs per piece and magnitude")
    parser.add_argument("--layers", type=int, default=0, help="part 2: override the layer count")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--static-shapes", action="store_true", help="dynamo: no automatic dynamic shapes")
    parser.add_argument("--skip-pieces", action="store_true", help="part 2 only")
    parser.add_argument(
        "--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="part 2: what is fused"
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    args = parser.parse_args()
    configure_determinism(True)
    if args.static_shapes:
        # A kernel per shape: a shape seen second would otherwise recompile with symbolic sizes.
        torch._dynamo.config.automatic_dynamic_shapes = False
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "static_shapes": args.static_shapes,
    }
    for shape in args.shapes:
        pieces = {} if args.skip_pieces else part1(shape, args.draws)
        report[shape] = {"pieces": pieces, "decode": part2(shape, args.layers, args.new_tokens, args.kinds)}
    # A piece whose compile failed runs uncompiled (the runtime's fallback): its zeros would mean nothing.
    report["compile_failures"] = list(fused.FAILURES)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_exactness.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
