"""The Phase-1 protocol per model on a GPU, with random weights in real architectures (no download).

For each model shape, in one process and one run:

1. ``naive``: transformers ``generate`` one prompt at a time with a forward hook (what a per-prompt script
   does), for ``--naive-prompts`` prompts, extrapolated to the protocol (labelled as extrapolated);
2. ``hf_batched``: one batched transformers ``generate`` of all eval prompts (the runtime before the fast
   path);
3. ``runtime``: ``phasegate_runtime.runner.Run`` itself, the code a real run executes (baseline, the
   independent reference direction, then every method x repeat: directions over the contrast prompts and
   steered generation, then the library-native cross-check of repeat 0 per method), with only the loader
   swapped for one that builds random weights; one-time warm-up is timed separately. The fast units and the
   native cross-check are reported apart, so the fast path's ratio to the bound stays comparable; the run is
   scored, and its parity_pass and failures are reported;
4. ``bound``: weight bytes / memory bandwidth per decode step x decode steps.

Writes ``gpu_protocol.json`` and ``gpu_protocol.md`` to ``--out``. ``--tiny`` runs a small config on the CPU
(to test this script); ``--layers N`` keeps the real widths with N layers (a quick GPU smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "src"))

# Before torch initialises CUDA: cuBLAS reads its workspace setting once.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
from chart import fast_path_s  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from phasegate_runtime import decode as fast  # noqa: E402
from phasegate_runtime import fused  # noqa: E402
from phasegate_runtime.determinism import configure_determinism  # noqa: E402
from phasegate_runtime.events import EventStream  # noqa: E402
from phasegate_runtime.generation import greedy_config, make_batches, stop_token_ids  # noqa: E402
from phasegate_runtime.models import LoadedModel  # noqa: E402
from phasegate_runtime.runner import Run, fast_reads  # noqa: E402
from phasegate_runtime.score import load_model_result, score  # noqa: E402
from phasegate_runtime.site import block_hidden, decoder_layers, replace_block_hidden  # noqa: E402
from phasegate_runtime.site_check import install_site_observer  # noqa: E402
from phasegate_runtime.spec import DEFAULT_NUMERICS, NumericsSpec, ParitySpec, parse_run_spec  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": {
        "arch": "qwen2",
        "attn": "sdpa",
        "layer": 15,
        "alpha": 8.0,
        "config": {
            "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
    },
    "gemma-2-9b": {
        "arch": "gemma2",
        "attn": "eager",
        "layer": 20,
        # Gemma scales embeddings by sqrt(hidden): its residual stream is ~50x larger at random init.
        "alpha": 400.0,
        "config": {
            "hidden_size": 3584, "num_hidden_layers": 42, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 256, "intermediate_size": 14336, "vocab_size": 256000,
            "max_position_embeddings": 8192, "sliding_window": 4096, "query_pre_attn_scalar": 256,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
        },
    },
}  # fmt: skip
TINY = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 128, "vocab_size": 512}  # fmt: skip
# Vendor datasheet HBM bandwidth (bytes/s), the figure the bound uses.
DATASHEET_BW = {"H100": 3.35e12, "H200": 4.8e12}


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """One word per model id (``<17>``), so decoded texts pin down every generated token exactly."""
    vocab = {f"<{i}>": i for i in range(vocab_size - 3)}
    for name in ("<pad>", "<eos>", "<bos>"):
        vocab[name] = len(vocab)
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", padding_side="left"
    )


def prompts(rng: random.Random, n: int, vocab: int, lo: int, hi: int) -> list[str]:
    return [" ".join(f"<{rng.randrange(vocab - 3)}>" for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    started = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - started, value


def measured_bandwidth() -> float | None:
    """Device-to-device copy of 2 GiB, counting bytes read plus written (median of 10)."""
    if not torch.cuda.is_available():
        return None
    src = torch.empty(1 << 30, dtype=torch.int16, device="cuda").random_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del src, dst
    return float(2 * (2 << 30) / sorted(times[3:])[len(times[3:]) // 2])


def build(shape: str, args: argparse.Namespace, device: torch.device) -> tuple[LoadedModel, dict[str, Any]]:
    info = SHAPES[shape]
    cfg_kwargs = dict(TINY) if args.tiny else dict(info["config"])
    if args.tiny and info["arch"] == "gemma2":
        cfg_kwargs |= {"sliding_window": 16, "query_pre_attn_scalar": 16}
    if args.layers:
        cfg_kwargs["num_hidden_layers"] = args.layers
    tok = word_tokenizer(int(cfg_kwargs["vocab_size"]))
    config = AutoConfig.for_model(
        info["arch"], **cfg_kwargs,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    dtype = torch.float32 if args.tiny else torch.bfloat16
    started = time.perf_counter()
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=info["attn"])
    model.eval()
    fast.install_fast_generate(model)
    install_site_observer(model)
    sync()
    load_s = time.perf_counter() - started
    n_layers = len(decoder_layers(model))
    loaded = LoadedModel(
        model=model, tokenizer=tok, resolved_path=f"random:{shape}", device=device, dtype=dtype,
        attn_implementation=info["attn"], num_layers=n_layers, hidden_size=int(config.hidden_size),
        load_s=load_s,
    )  # fmt: skip
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return loaded, {"layers": n_layers, "params": sum(p.numel() for p in model.parameters()),
                    "weight_bytes": weight_bytes, "build_s": load_s}  # fmt: skip


def spec_dict(shape: str, loaded: LoadedModel, args: argparse.Namespace, data: dict[str, list[str]]) -> Any:
    layer = min(SHAPES[shape]["layer"], loaded.num_layers - 1)
    return {
        "spec_version": 2, "phase_id": "bench-gpu-protocol", "model_key": shape,
        "model": {"id": f"random/{shape}", "revision": None,
                  "dtype": "float32" if args.tiny else "bfloat16", "device": loaded.device.type,
                  "attn_implementation": SHAPES[shape]["attn"], "tiny_seed": 0},
        "site": {"layer": layer, "position": -1},
        "steering": {"alpha": args.alpha or SHAPES[shape]["alpha"], "min_changed_fraction": 0.1},
        "numerics": {"decoder": "fast", "fused_kernels": args.fused_kernels, "cuda_graphs": True,
                     "grouped_eager": True},
        "generation": {"max_new_tokens": args.new_tokens, "batch_size": 32},
        "methods": args.methods, "repeats": args.repeats, "seed": 1234, "deterministic": True,
        "prompts": data,
        "classification": {"normal_rule": "exact_match", "garbled_max_repeated_ngram_fraction": 0.6,
                           "garbled_ngram": 3, "garbled_min_unique_token_fraction": 0.2,
                           "garbled_max_nonprintable_fraction": 0.1},
        "cache_dir": "/tmp/phasegate-bench-cache",
    }  # fmt: skip


def naive_loop(loaded: LoadedModel, eval_prompts: list[str], layer: int, args: argparse.Namespace) -> float:
    """Per-prompt transformers generate with a steering hook; returns seconds per prompt (mean)."""
    hf = fast.hf_generate(loaded.model)
    config = config_of(loaded, args.new_tokens)
    delta = torch.randn(loaded.hidden_size, device=loaded.device).to(loaded.dtype)
    block = decoder_layers(loaded.model)[layer]

    def steer(_module: torch.nn.Module, _args: Any, out: Any) -> Any:
        return replace_block_hidden(out, block_hidden(out) + delta)

    handle = block.register_forward_hook(steer)
    try:
        per = []
        for prompt in eval_prompts[: args.naive_prompts]:
            (batch,) = make_batches(loaded.tokenizer, [prompt], 1, loaded.device)
            with torch.inference_mode():
                seconds, _ = timed(partial(hf, **batch.model_inputs(), generation_config=config))
            per.append(seconds)
    finally:
        handle.remove()
    return sum(per) / len(per)


def config_of(loaded: LoadedModel, new_tokens: int) -> Any:
    return greedy_config(loaded.tokenizer, new_tokens, stop_token_ids(loaded.tokenizer, loaded.model))


def numerics(loaded: LoadedModel, **changes: Any) -> None:
    """Decode with the default numerics except ``changes`` (a timing variant); no changes restores them."""
    fast.set_numerics(loaded.model, NumericsSpec(**{**vars(DEFAULT_NUMERICS), **changes}))


def one_pass(loaded: LoadedModel, eval_prompts: list[str], new_tokens: int, use_hf: bool) -> float:
    config = config_of(loaded, new_tokens)
    # model.generate is the runtime's fast decoder once load_model (or the bench's builder) has installed it.
    gen: Callable[..., Any] = fast.hf_generate(loaded.model) if use_hf else loaded.model.generate  # type: ignore[assignment]
    batches = make_batches(loaded.tokenizer, eval_prompts, 32, loaded.device)

    def go() -> None:
        with torch.inference_mode():
            for b in batches:
                gen(**b.model_inputs(), generation_config=config)

    return timed(go)[0]


def bench_shape(shape: str, args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    loaded, info = build(shape, args, device)
    vocab = len(loaded.tokenizer)
    rng = random.Random(7)
    data = {
        "harmful": prompts(rng, args.contrast, vocab, 16, 28),
        "harmless": prompts(rng, args.contrast, vocab, 16, 28),
        "eval": prompts(rng, args.eval, vocab, 18, 28),
    }
    spec = parse_run_spec(spec_dict(shape, loaded, args, data))
    row: dict[str, Any] = {"shape": shape, **info, "eval_prompts": args.eval, "new_tokens": args.new_tokens}
    print(f"[{shape}] built in {info['build_s']:.1f}s, {info['params'] / 1e9:.2f}B params", flush=True)

    row["naive_s_per_prompt"] = naive_loop(loaded, data["eval"], spec.site.layer, args)
    row["naive_prompts_timed"] = args.naive_prompts
    print(f"[{shape}] naive {row['naive_s_per_prompt']:.2f}s/prompt", flush=True)
    row["hf_batched_pass_s"] = one_pass(loaded, data["eval"], args.new_tokens, use_hf=True)
    print(f"[{shape}] hf batched {row['hf_batched_pass_s']:.2f}s/pass", flush=True)
    # One-time costs, not part of any unit: the first fast pass of the eval shape compiles the fused
    # kernels and runs a warm-up step before its CUDA graph capture; later passes of that shape do neither.
    # With the Run's numerics, watched by the site observer as the Run's passes are (its check compiles too).
    numerics(loaded, fused_kernels=args.fused_kernels)
    compiled_before = fused.COMPILE_SECONDS[0]
    with install_site_observer(loaded.model).watch(spec.site.layer, None, device):
        row["first_pass_s"] = one_pass(loaded, data["eval"], args.new_tokens, use_hf=False)
    row["compile_s"] = fused.COMPILE_SECONDS[0] - compiled_before
    row["fused_kernels"] = fused.fused_mode(args.fused_kernels, device) != "off"  # false if compiling failed
    row["fast_pass_s"] = one_pass(loaded, data["eval"], args.new_tokens, use_hf=False)
    print(f"[{shape}] first pass {row['first_pass_s']:.2f}s (compile {row['compile_s']:.1f}s), "
          f"fast {row['fast_pass_s']:.2f}s", flush=True)  # fmt: skip
    numerics(loaded, fused_kernels=args.fused_kernels, cuda_graphs=False)
    row["static_eager_pass_s"] = one_pass(loaded, data["eval"], args.new_tokens, use_hf=False)
    numerics(loaded, fused_kernels="off")
    one_pass(loaded, data["eval"], args.new_tokens, use_hf=False)  # its own warm-up step
    row["fast_pass_unfused_s"] = one_pass(loaded, data["eval"], args.new_tokens, use_hf=False)
    numerics(loaded)
    print(f"[{shape}] static eager {row['static_eager_pass_s']:.2f}s, "
          f"unfused {row['fast_pass_unfused_s']:.2f}s", flush=True)  # fmt: skip

    # The runner imports each method's library lazily, on first use: a one-time cost, timed here instead.
    row["library_import_s"] = timed(lambda: [__import__(m) for m in ("nnsight", "pyvene")])[0]
    counts_before = fast.DECODE_COUNTS.copy()
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{shape}-"))
    started = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        Run(spec, run_dir, EventStream(devnull), loader=lambda _m, _c: loaded).execute()
    row["runtime_total_s"] = time.perf_counter() - started
    print(f"[{shape}] runtime Run {row['runtime_total_s']:.1f}s", flush=True)
    row["decode_paths"] = dict(fast.DECODE_COUNTS - counts_before)
    result = json.loads((run_dir / "result.json").read_text())
    shutil.copy(run_dir / "result.json", out / f"result-{shape}.json")
    row["baseline_s"] = result["baseline"]["wall_s"]
    per_method: dict[str, list[float]] = {}
    for unit in result["units"]:
        per_method.setdefault(unit["method"], []).append(unit["wall_s"])
    row["unit_s"] = per_method
    row["units_ok"] = all(u["ok"] for u in result["units"])
    row["errors"] = sorted({u["error"] for u in result["units"] if not u["ok"]})
    # The proof of the run, and the native cross-check's cost apart from the fast units'.
    row["reference_s"] = result["timings"]["reference_wall_s"]
    row["native_s"] = {u["method"]: u["wall_s"] for u in result["native"]}
    scored = score({shape: load_model_result(run_dir / "result.json")}, ParitySpec(0.999999, 1e-4))
    proof = scored["models"][shape]
    row["parity_pass"] = proof["parity_pass"]
    row["failures"] = proof["failures"]
    row["site_exact"] = proof["steering"]["site_exact"]
    row["reference"] = proof["reference"]["methods"]
    row["native"] = proof["native"]["methods"]
    outputs = [tuple(map(tuple, u["token_ids"])) for u in result["units"] if u["ok"]]
    row["steered_outputs_identical"] = len(set(outputs)) == 1 and len(outputs) == len(result["units"])
    row["steered_differs_from_baseline"] = bool(outputs) and outputs[0] != tuple(
        map(tuple, result["baseline"]["token_ids"])
    )
    row["mean_new_tokens"] = sum(len(t.split()) for t in result["baseline"]["outputs"]) / args.eval
    row["determinism"] = result["environment"]["determinism"]
    row["environment"] = {k: result["environment"][k] for k in ("torch", "transformers", "nnsight", "pyvene",
                                                                "device_name")}  # fmt: skip
    row |= checks(loaded, data["eval"], spec.site.layer, args)
    row["method_parts_s"] = method_parts(loaded, data, spec, args)
    return row


def method_parts(
    loaded: LoadedModel, data: dict[str, list[str]], spec: Any, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Where a method's unit goes: its direction (contrast forward passes) and one steered pass, timed
    apart (the second call of each, so one-time library set-up is left out)."""
    from phasegate_runtime.backend import make_backend
    from phasegate_runtime.direction import compute_direction, steering_delta

    harmful, harmless, batches = (make_batches(loaded.tokenizer, data[k], 32, loaded.device)
                                  for k in ("harmful", "harmless", "eval"))  # fmt: skip
    config = config_of(loaded, args.new_tokens)
    layer = spec.site.layer
    parts: dict[str, dict[str, float]] = {}
    for method in args.methods:
        backend = make_backend(method, loaded)

        def direction_fn(backend: Any = backend) -> Any:
            with fast_reads(loaded.model, layer):
                return compute_direction(backend, harmful, harmless, layer, spec.site.position)

        direction_s, direction = timed(direction_fn)
        direction_s, direction = timed(direction_fn)
        delta = steering_delta(direction.unit, spec.steering.alpha, loaded.dtype, loaded.device)

        def steered(backend: Any = backend, delta: torch.Tensor = delta) -> None:
            for b in batches:
                backend.steered_generate(b, layer, delta, config)

        timed(steered)
        parts[method] = {"direction_s": direction_s, "steered_pass_s": timed(steered)[0]}
    return parts


def checks(
    loaded: LoadedModel, eval_prompts: list[str], layer: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The CUDA graph must replay the steering add (graph == eager static path, token for token), and what
    deterministic algorithms cost (one fast pass without them, and whether its tokens change)."""
    from phasegate_runtime.backend_hooks import HooksBackend
    from phasegate_runtime.generation import new_token_ids

    backend = HooksBackend(loaded)
    config = config_of(loaded, args.new_tokens)
    stops = stop_token_ids(loaded.tokenizer, loaded.model)
    batches = make_batches(loaded.tokenizer, eval_prompts, 32, loaded.device)
    torch.manual_seed(3)
    delta = (torch.randn(loaded.hidden_size) * (args.alpha or 8.0) / loaded.hidden_size**0.5).to(
        loaded.device, loaded.dtype
    )

    def steered() -> list[list[int]]:
        rows: list[list[int]] = []
        for b in batches:
            rows += new_token_ids(backend.steered_generate(b, layer, delta, config), b.prompt_len, stops)
        return rows

    graph_s, with_graph = timed(steered)
    numerics(loaded, cuda_graphs=False)
    eager_s, eager = timed(steered)
    numerics(loaded)
    torch.use_deterministic_algorithms(False)
    nondet_s, nondet = timed(steered)
    torch.use_deterministic_algorithms(True)
    return {
        "check_hooks_graph_pass_s": graph_s,
        "check_hooks_eager_pass_s": eager_s,
        "check_graph_equals_eager": with_graph == eager,
        "check_nondeterministic_pass_s": nondet_s,
        "check_nondeterministic_equals_deterministic": nondet == with_graph,
    }


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, bw: float | None) -> dict[str, Any]:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    card = "H200" if "H200" in name else "H100" if "H100" in name else None
    sheet = DATASHEET_BW.get(card or "")
    passes = 1 + len(args.methods) * args.repeats
    for r in rows:
        steps = args.new_tokens  # prefill + (new_tokens - 1) decode steps: one weight read each
        for label, b in (("datasheet", sheet), ("measured_copy", bw)):
            r[f"bound_pass_s_{label}"] = steps * r["weight_bytes"] / b if b else None
            r[f"bound_protocol_s_{label}"] = passes * steps * r["weight_bytes"] / b if b else None
        r["naive_protocol_s_extrapolated"] = r["naive_s_per_prompt"] * args.eval * passes
        r["hf_batched_protocol_s_estimated"] = r["hf_batched_pass_s"] * passes
        hooks = r["unit_s"].get("hooks")
        r["method_ratio_vs_hooks"] = (
            {m: (sum(v) / len(v)) / (sum(hooks) / len(hooks)) for m, v in r["unit_s"].items()}
            if hooks
            else {}
        )
    plain_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {"device": name, "card": card, "bandwidth_measured_Bps": bw, "bandwidth_datasheet_Bps": sheet,
            "passes_per_protocol": passes, "args": plain_args, "models": rows}  # fmt: skip


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"GPU: {summary['device']} (weights random, bf16). Passes per protocol: "
             f"{summary['passes_per_protocol']}.", "",
             "| shape | naive loop (extrap.) | hf batched x passes (est.) | runtime (real Run) "
             "| fast path (baseline + fast units) | bound (datasheet) | fast path / bound "
             "| native cross-check | build | first pass (compile) | outputs identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["models"]:
        bound = r["bound_protocol_s_datasheet"] or r["bound_protocol_s_measured_copy"]
        # The fast path's ratio counts the 16 generation passes' units (and their directions), as the bound
        # does; the native cross-check is its own column (issue 16, item 4), the rest of the Run is the proof.
        fast = fast_path_s(r)
        ratio = f"{fast / bound:.1f}x" if bound else "n/a"
        lines.append(
            f"| {r['shape']} | {r['naive_protocol_s_extrapolated']:.0f} s | "
            f"{r['hf_batched_protocol_s_estimated']:.1f} s | {r['runtime_total_s']:.1f} s | {fast:.1f} s | "
            f"{bound or 0:.2f} s | {ratio} | {sum(r['native_s'].values()):.1f} s | {r['build_s']:.1f} s | "
            f"{r['first_pass_s']:.2f} s ({r['compile_s']:.1f} s) | "
            f"{r['steered_outputs_identical']} |"
        )
    lines += ["", "| shape | pass: naive/prompt | hf batched | static eager | fast, unfused | fast | bound | "
              "baseline unit | per-method unit mean (ratio vs hooks) | decode paths |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["models"]:
        methods = ", ".join(
            f"{m} {sum(v) / len(v):.2f} s ({r['method_ratio_vs_hooks'].get(m, 0):.2f}x)"
            for m, v in r["unit_s"].items()
        )
        bound = r["bound_pass_s_datasheet"] or r["bound_pass_s_measured_copy"] or 0
        lines.append(
            f"| {r['shape']} | {r['naive_s_per_prompt']:.2f} s | {r['hf_batched_pass_s']:.2f} s | "
            f"{r['static_eager_pass_s']:.2f} s | {r['fast_pass_unfused_s']:.2f} s | "
            f"{r['fast_pass_s']:.2f} s | {bound:.2f} s | "
            f"{r['baseline_s']:.2f} s | {methods} | {r['decode_paths']} |"
        )
    lines += ["", "| shape | fast units (sum) | reference | native cross-check per method (x fast r0 unit) "
              "| native total / fast units | parity_pass | site exact | native tokens identical |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["models"]:
        fast_units = sum(sum(v) for v in r["unit_s"].values())
        natives = ", ".join(f"{m} {s:.1f} s ({s / r['unit_s'][m][0]:.1f}x)" for m, s in r["native_s"].items())
        identical = all(v["tokens_identical"] for v in r["native"].values())
        lines.append(
            f"| {r['shape']} | {fast_units:.1f} s | {r['reference_s']:.2f} s | {natives} | "
            f"{sum(r['native_s'].values()) / fast_units:.2f}x | {r['parity_pass']} | {r['site_exact']} | "
            f"{identical} |"
        )
    failures = [f"- {r['shape']}: {f}" for r in summary["models"] for f in r["failures"]]
    if failures:
        lines += ["", "parity failures:", *failures]
    return "\n".join(lines) + "\n"


def shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every bench that builds these shapes with :func:`build`."""
    parser.add_argument("--tiny", action="store_true", help="small configs on the CPU (tests the script)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--layers", type=int, default=0, help="override the layer count (smoke test)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=["nnsight", "hooks", "pyvene"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval", type=int, default=30)
    parser.add_argument("--contrast", type=int, default=32, help="harmful and harmless prompts, each")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--naive-prompts", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.0, help="0: the shape's own")
    parser.add_argument("--fused-kernels", choices=["off", "exact", "on", "auto"], default="exact",
                        help="the Run's numerics.fused_kernels (the protocol default: exact)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    parser.add_argument("--render", type=Path, help="only write the tables of an earlier gpu_protocol.json")
    args = parser.parse_args()
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())), end="")
        return
    configure_determinism(True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    bw = measured_bandwidth() if device.type == "cuda" else None
    rows = []
    for shape in args.shapes:
        rows.append(bench_shape(shape, args, device, args.out))
        (args.out / "gpu_protocol.json").write_text(json.dumps(summarise(rows, args, bw), indent=2))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = summarise(rows, args, bw)
    (args.out / "gpu_protocol.json").write_text(json.dumps(summary, indent=2))
    (args.out / "gpu_protocol.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
