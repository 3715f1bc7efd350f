"""The pyvene adapter: architectures missing from pyvene's model card still get the site registered."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from pyvene.models.intervenable_modelcard import type_to_dimension_mapping, type_to_module_mapping
from transformers import AutoConfig, AutoModelForCausalLM

from phasegate_runtime.backend import make_backend
from phasegate_runtime.direction import compute_direction, steering_delta
from phasegate_runtime.generation import greedy_config, make_batches

from _data import HARMFUL, HARMLESS


def test_unknown_architecture_is_adapted(load_tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_tiny("qwen2")
    config = AutoConfig.for_model(
        "qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=272, pad_token_id=base.tokenizer.pad_token_id,
        eos_token_id=base.tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Another test may have adapted qwen3 already in this process: forget that, so this one adapts it anew.
    monkeypatch.delitem(type_to_module_mapping, type(model), raising=False)
    monkeypatch.delitem(type_to_dimension_mapping, type(model), raising=False)
    loaded = dataclasses.replace(base, model=model, num_layers=2)
    harmful = make_batches(loaded.tokenizer, HARMFUL, 4, loaded.device)
    harmless = make_batches(loaded.tokenizer, HARMLESS, 4, loaded.device)
    dirs = {
        m: compute_direction(make_backend(m, loaded), harmful, harmless, 1, -1) for m in ("hooks", "pyvene")
    }
    assert float(torch.from_numpy(dirs["hooks"].unit - dirs["pyvene"].unit).norm()) <= 1e-6
    delta = steering_delta(dirs["hooks"].unit, 12.0, torch.float32, loaded.device)
    config_gen = greedy_config(loaded.tokenizer, 5, [])
    config_gen.eos_token_id = None
    batch = harmful[0]
    outs = [
        make_backend(m, loaded).steered_generate(batch, 1, delta, config_gen) for m in ("hooks", "pyvene")
    ]
    assert torch.equal(outs[0], outs[1])
