"""A real run end to end: from a local safetensors checkpoint to result.json, in a process of its own.

Issue 16 asks for the load inside the figure. Per shape this builds the random-weight model of
``gpu_protocol.py``, saves it with its tokenizer as a safetensors checkpoint on local disk, drops the page
cache (cold load: needs root), and times ``python -m phasegate_runtime run`` on a spec that names that folder,
from the parent's spawn to the child's exit. ``result.json``'s timings split it: the process's own age at the
end (``since_process_start_s``), the load (``load_s``, the runtime's real ``load_model``), and the protocol
(baseline, reference, the method units and the native cross-check). The ratio is the whole against the
protocol's own time (goal: <= 1.5x).

    runtime/.venv/bin/python bench/checkpoint_run.py --tiny --repeats 1 --eval 4 --contrast 4 --new-tokens 8
    python3 bench/checkpoint_run.py --out $OUT        # on the GPU machine (see bench/README.md)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_protocol as gp

RUNTIME_SRC = Path(__file__).resolve().parents[1] / "runtime" / "src"


def drop_page_cache() -> bool:
    """Cold reads from disk for the next load; False where this process may not (not root)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def save_checkpoint(
    shape: str, args: argparse.Namespace, device: torch.device, folder: Path
) -> dict[str, Any]:
    loaded, info = gp.build(shape, args, device)
    started = time.perf_counter()
    loaded.model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    info["save_s"] = time.perf_counter() - started
    info["checkpoint_bytes"] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    vocab = len(loaded.tokenizer)
    rng = random.Random(7)
    data = {
        "harmful": gp.prompts(rng, args.contrast, vocab, 16, 28),
        "harmless": gp.prompts(rng, args.contrast, vocab, 16, 28),
        "eval": gp.prompts(rng, args.eval, vocab, 18, 28),
    }
    spec = gp.spec_dict(shape, loaded, args, data)
    spec["model"]["id"] = str(folder)
    info["spec"] = spec
    del loaded
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return info


def load_both_ways(folder: Path, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """The baseline beside the runtime's loader, each from a cold page cache: from_pretrained to the CPU and
    then .to(device) (the runtime before issue 16), against straight onto the device (device_map)."""
    from transformers import AutoModelForCausalLM

    times: dict[str, float] = {}
    for name, kwargs in (("cpu_then_to_s", {}), ("device_map_s", {"device_map": str(device)})):
        drop_page_cache()
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
        if name == "cpu_then_to_s":
            model.to(device)  # type: ignore[arg-type]
        gp.sync()
        times[name] = time.perf_counter() - started
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return times


def run_shape(shape: str, args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    folder = args.checkpoints / shape
    folder.mkdir(parents=True, exist_ok=True)
    info = save_checkpoint(shape, args, device, folder)
    loads = (
        load_both_ways(folder, device, torch.float32 if args.tiny else torch.bfloat16)
        if args.load_baseline
        else {}
    )
    spec_path = out / f"spec-{shape}.json"
    spec_path.write_text(json.dumps(info.pop("spec"), indent=2))
    run_dir = out / f"run-{shape}"
    cold = drop_page_cache()
    print(
        f"[{shape}] checkpoint {info['checkpoint_bytes'] / 1e9:.1f} GB saved; page cache dropped: {cold}",
        flush=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(RUNTIME_SRC), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--spec", str(spec_path), "--out", str(run_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"[{shape}] the run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    t = result["timings"]
    protocol_s = t["baseline_wall_s"] + t["reference_wall_s"] + t["units_wall_s"] + t["native_wall_s"]
    fast_s = t["baseline_wall_s"] + t["units_wall_s"]
    row = {
        "shape": shape,
        "cold_page_cache": cold,
        "checkpoint_bytes": info["checkpoint_bytes"],
        "spawn_to_exit_s": wall,
        "since_process_start_s": t.get("since_process_start_s"),
        "load_s": t["load_s"],
        "compile_s": t["compile_s"],
        "protocol_s": protocol_s,
        "fast_units_s": fast_s,
        "native_s": t["native_wall_s"],
        "units_ok": all(u["ok"] for u in result["units"]),
        "whole_over_protocol": wall / protocol_s,
        **loads,
    }
    # Interpreter start-up and imports, before the run began (the load is inside process_wall_s).
    age = t.get("since_process_start_s")
    row["before_run_s"] = None if age is None else age - t["process_wall_s"]
    print(
        f"[{shape}] {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})}",
        flush=True,
    )
    return row


def child(spec_path: Path, out: Path) -> None:
    """The run itself, as ``python -m phasegate_runtime run`` does it, with the tokenizer read directly."""
    import dataclasses

    from transformers import PreTrainedTokenizerFast

    from phasegate_runtime.events import EventStream
    from phasegate_runtime.models import LoadedModel, load_model
    from phasegate_runtime.runner import Run
    from phasegate_runtime.spec import ModelSpec, parse_run_spec

    spec = parse_run_spec(json.loads(spec_path.read_text()))

    def loader(model: ModelSpec, cache_dir: str) -> LoadedModel:
        loaded = load_model(model, cache_dir)
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(Path(model.id) / "tokenizer.json"),
            pad_token="<pad>",
            eos_token="<eos>",
            bos_token="<bos>",
            padding_side="left",
        )
        return dataclasses.replace(loaded, tokenizer=tok)

    with open(os.devnull, "w") as devnull:
        Run(spec, out, EventStream(devnull), loader=loader).execute()


def main() -> None:
    if "--child" in sys.argv:
        at = sys.argv.index
        child(Path(sys.argv[at("--spec") + 1]), Path(sys.argv[at("--out") + 1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small config on the CPU (tests this script)")
    parser.add_argument("--shapes", nargs="+", default=list(gp.SHAPES), choices=list(gp.SHAPES))
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["nnsight", "hooks", "pyvene"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval", type=int, default=30)
    parser.add_argument("--contrast", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--fused-kernels", choices=["off", "on", "auto"], default="off")
    parser.add_argument("--checkpoints", type=Path, default=Path("/tmp/phasegate-checkpoints"))
    parser.add_argument(
        "--load-baseline", action="store_true", help="also time both load paths, cold, in-process"
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_shape(shape, args, device, args.out) for shape in args.shapes]
    summary = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "rows": rows}
    (args.out / "checkpoint_run.json").write_text(json.dumps(summary, indent=2))
    cols = [
        "shape",
        "checkpoint GB",
        "cold",
        "spawn to exit s",
        "before run s",
        "load s",
        "compile s",
        "protocol s",
    ]
    head = "| " + " | ".join([*cols, "ratio"]) + " |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        before = "-" if r["before_run_s"] is None else f"{r['before_run_s']:.1f}"
        cells = [
            r["shape"],
            f"{r['checkpoint_bytes'] / 1e9:.1f}",
            str(r["cold_page_cache"]),
            f"{r['spawn_to_exit_s']:.1f}",
            before,
            f"{r['load_s']:.1f}",
            f"{r['compile_s']:.1f}",
            f"{r['protocol_s']:.1f}",
            f"{r['whole_over_protocol']:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (args.out / "checkpoint_run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
