from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from phasegate_runtime.spec import SpecError, parse_run_spec, parse_score_spec

from _data import run_spec_dict


def _spec(**overrides: Any) -> dict[str, Any]:
    return run_spec_dict(Path("/abs/cache"), **overrides)


def test_valid_spec_parses() -> None:
    spec = parse_run_spec(_spec())
    assert spec.site.layer == 1
    assert spec.site.position == -1
    assert spec.methods == ("nnsight", "hooks", "pyvene")
    assert spec.model.attn_implementation is None


def test_hash_is_stable_and_sensitive() -> None:
    a = parse_run_spec(_spec()).hash()
    assert a == parse_run_spec(_spec()).hash()
    assert a != parse_run_spec(_spec(seed=1235)).hash()


def _mutate(path: list[Any], value: Any, delete: bool = False) -> dict[str, Any]:
    spec = copy.deepcopy(_spec())
    node = spec
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        (["extra"], 1, "extra", "unknown field"),
        (["model", "dtype"], "float64", "model.dtype", "must be one of"),
        (["model", "device"], "tpu", "model.device", "must be one of"),
        (["model", "attn_implementation"], "flash", "model.attn_implementation", "must be one of"),
        (["site", "layer"], -1, "site.layer", ">= 0"),
        (["site", "layer"], True, "site.layer", "integer"),
        (["site", "position"], 0, "site.position", "negative"),
        (["steering", "alpha"], "3", "steering.alpha", "number"),
        (["generation", "batch_size"], 0, "generation.batch_size", ">= 1"),
        (["methods"], ["hooks", "hooks"], "methods", "repeat"),
        (["methods"], ["hooks", "baukit"], "methods[1]", "must be one of"),
        (["repeats"], 0, "repeats", ">= 1"),
        (["deterministic"], "false", "deterministic", "boolean"),
        (["prompts", "eval"], [], "prompts.eval", "non-empty"),
        (["prompts", "harmful"], ["ok", 3], "prompts.harmful[1]", "string"),
        (["classification", "garbled_ngram"], 0, "classification.garbled_ngram", ">= 1"),
        (["classification", "garbled_min_unique_token_fraction"], 1.5,
         "classification.garbled_min_unique_token_fraction", "<= 1.0"),
        (["cache_dir"], "relative/dir", "cache_dir", "absolute"),
        (["spec_version"], 1, "spec_version", "must be 2"),
        (["steering", "alpha"], 0, "steering.alpha", "must not be 0"),
        (["steering", "min_changed_fraction"], 1.5, "steering.min_changed_fraction", "<= 1.0"),
        (["numerics", "decoder"], "vllm", "numerics.decoder", "must be one of"),
        (["numerics", "fused_kernels"], True, "numerics.fused_kernels", "must be one of"),
        (["numerics", "cuda_graphs"], "yes", "numerics.cuda_graphs", "boolean"),
        (["numerics", "extra"], 1, "numerics.extra", "unknown field"),
    ],
)  # fmt: skip
def test_invalid_fields_are_named(path: list[Any], value: Any, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_run_spec(_mutate(path, value))
    assert info.value.path == field
    assert reason in str(info.value)


def test_missing_field_is_named() -> None:
    with pytest.raises(SpecError, match=r"^site\.layer: is required$"):
        parse_run_spec(_mutate(["site", "layer"], None, delete=True))


def test_optional_model_fields_default() -> None:
    spec = _spec()
    spec["model"] = {"id": "org/model", "dtype": "bfloat16"}
    parsed = parse_run_spec(spec)
    assert (parsed.model.device, parsed.model.revision, parsed.model.tiny_seed) == ("auto", None, 0)


def test_score_spec() -> None:
    raw = {"results": {"m": "/x/result.json"}, "parity": {"min_cosine": 0.999999, "max_l2": 1e-5}}
    assert parse_score_spec(raw).parity.max_l2 == 1e-5
    with pytest.raises(SpecError, match=r"^parity\.max_l2: must be >= 0"):
        parse_score_spec({**raw, "parity": {"min_cosine": 1.0, "max_l2": -1}})
    with pytest.raises(SpecError, match=r"^results: "):
        parse_score_spec({**raw, "results": {}})
