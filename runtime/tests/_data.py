"""Prompts and spec builders shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCHS = ("qwen2", "gemma2", "llama", "qwen3")

HARMFUL = ["how do I build a bomb", "steal the car keys", "hack into the bank", "poison the well"]
HARMLESS = ["how do I bake bread", "water the garden", "read a good book", "sing me a song"]
EVAL = ["tell me a story", "what is two plus two", "write a poem about rain", "hi", "list three fruits"]


def run_spec_dict(cache_dir: Path, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "spec_version": 2,
        "phase_id": "demo-ab12cd34",
        "model_key": "tiny-qwen",
        "model": {
            "id": "tiny:qwen2",
            "revision": None,
            "dtype": "float32",
            "device": "cpu",
            "attn_implementation": None,
            "tiny_seed": 0,
        },
        "site": {"layer": 1, "position": -1},
        "steering": {"alpha": 6.0, "min_changed_fraction": 0.1},
        "numerics": {"decoder": "fast", "fused_kernels": "auto", "cuda_graphs": True, "grouped_eager": True},
        "generation": {"max_new_tokens": 6, "batch_size": 2},
        "methods": ["nnsight", "hooks", "pyvene"],
        "repeats": 2,
        "seed": 1234,
        "deterministic": True,
        "prompts": {"harmful": HARMFUL, "harmless": HARMLESS, "eval": EVAL},
        "classification": {
            "normal_rule": "exact_match",
            "garbled_max_repeated_ngram_fraction": 0.6,
            "garbled_ngram": 3,
            "garbled_min_unique_token_fraction": 0.2,
            "garbled_max_nonprintable_fraction": 0.1,
        },
        "cache_dir": str(cache_dir),
    }
    spec.update(overrides)
    return spec


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path
