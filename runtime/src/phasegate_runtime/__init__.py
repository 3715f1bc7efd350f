"""phasegate steering runtime: steering directions and steered generations with nnsight, plain hooks and
pyvene, checked for parity. See SPEC.md for the JSON contracts.

Re-exports are resolved lazily: importing torch and transformers takes several seconds, and the CLI must
be able to reject a bad spec (exit 2) without paying for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import Backend, make_backend
    from .classify import Label, classify, count_labels, degeneracy, is_garbled
    from .direction import Direction, compute_direction, steering_delta
    from .models import LoadedModel, load_model
    from .runner import run
    from .score import ModelResult, load_model_result, score, score_model
    from .site import block_hidden, decoder_layers, replace_block_hidden
    from .spec import TINY_ARCHS, RunSpec, ScoreSpec, SpecError, parse_run_spec, parse_score_spec
    from .tiny import build_tokenizer, ensure_tiny_model

_EXPORTS: dict[str, str] = {
    "Backend": "backend",
    "make_backend": "backend",
    "Label": "classify",
    "classify": "classify",
    "count_labels": "classify",
    "degeneracy": "classify",
    "is_garbled": "classify",
    "Direction": "direction",
    "compute_direction": "direction",
    "steering_delta": "direction",
    "LoadedModel": "models",
    "load_model": "models",
    "run": "runner",
    "ModelResult": "score",
    "load_model_result": "score",
    "score": "score",
    "score_model": "score",
    "block_hidden": "site",
    "decoder_layers": "site",
    "replace_block_hidden": "site",
    "RunSpec": "spec",
    "ScoreSpec": "spec",
    "SpecError": "spec",
    "parse_run_spec": "spec",
    "parse_score_spec": "spec",
    "TINY_ARCHS": "spec",
    "build_tokenizer": "tiny",
    "ensure_tiny_model": "tiny",
}

__all__ = [
    "TINY_ARCHS",
    "Backend",
    "Direction",
    "Label",
    "LoadedModel",
    "ModelResult",
    "RunSpec",
    "ScoreSpec",
    "SpecError",
    "block_hidden",
    "build_tokenizer",
    "classify",
    "compute_direction",
    "count_labels",
    "decoder_layers",
    "degeneracy",
    "ensure_tiny_model",
    "is_garbled",
    "load_model",
    "load_model_result",
    "make_backend",
    "parse_run_spec",
    "parse_score_spec",
    "replace_block_hidden",
    "run",
    "score",
    "score_model",
    "steering_delta",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
