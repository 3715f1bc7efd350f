from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from phasegate_runtime.models import default_attn_implementation, load_model
from phasegate_runtime.spec import ModelSpec, SpecError


def test_tiny_models_load_with_recorded_shape(load_tiny: Any) -> None:
    for arch in ("qwen2", "gemma2", "llama"):
        loaded = load_tiny(arch)
        assert (loaded.num_layers, loaded.hidden_size) == (3, 64)
        assert loaded.tokenizer.padding_side == "left"
        assert Path(loaded.resolved_path).name == f"tiny-{arch}-s0"
    assert load_tiny("gemma2").attn_implementation == "eager"


def test_recorded_path_loads_back_with_plain_transformers(load_tiny: Any) -> None:
    loaded = load_tiny("qwen2")
    again = AutoModelForCausalLM.from_pretrained(loaded.resolved_path)
    ours, theirs = loaded.model.state_dict(), again.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_local_path_and_dtype(load_tiny: Any, cache_dir: Path) -> None:
    path = load_tiny("llama").resolved_path
    spec = ModelSpec(
        id=path, revision=None, dtype="bfloat16", device="cpu", attn_implementation="eager", tiny_seed=0
    )
    loaded = load_model(spec, str(cache_dir))
    assert loaded.resolved_path == path
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.attn_implementation == "eager"


def test_attn_defaults() -> None:
    assert default_attn_implementation("gemma2", None) == "eager"
    assert default_attn_implementation("gemma2", "sdpa") == "sdpa"
    assert default_attn_implementation("qwen2", None) is None


def test_bad_ids_are_spec_errors(cache_dir: Path) -> None:
    # A malformed hub id is refused by the hub client before any network: invalid, not retried on a GPU.
    for bad in ("tiny:gpt9", "/no/such/dir", "bad//id"):
        spec = ModelSpec(
            id=bad, revision=None, dtype="float32", device="cpu", attn_implementation=None, tiny_seed=0
        )
        with pytest.raises(SpecError, match=r"model\.id"):
            load_model(spec, str(cache_dir))


def test_hub_ids_resolve_offline_from_cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    # No download in tests: with HF_HUB_OFFLINE an uncached id must fail (retryable), not hang.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(
        id="org/not-cached",
        revision=None,
        dtype="float32",
        device="cpu",
        attn_implementation=None,
        tiny_seed=0,
    )
    with pytest.raises(Exception) as info:  # noqa: PT011 - any non-spec error (hub client's own types)
        load_model(spec, str(cache_dir))
    assert not isinstance(info.value, SpecError)
