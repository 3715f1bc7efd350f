"""The fast greedy decoder against transformers' own ``generate``, and its routing of every method."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from phasegate_runtime.backend import make_backend
from phasegate_runtime.backend_hooks import forward_hook
from phasegate_runtime.decode import DECODE_COUNTS, additive_mask, hf_generate, is_plain_greedy, set_numerics
from phasegate_runtime.generation import greedy_config, make_batches, new_token_ids
from phasegate_runtime.site import block_hidden, decoder_layers, replace_block_hidden
from phasegate_runtime.spec import DEFAULT_NUMERICS

from _data import EVAL

ARCHS = ("qwen2", "gemma2", "llama", "qwen3")
# Long enough to run past gemma2's tiny sliding window (16) and to pass a stop check.
NEW_TOKENS = 20


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_equals_transformers_generate(load_tiny: Any, arch: str) -> None:
    loaded = load_tiny(arch)
    tok = loaded.tokenizer
    (batch,) = make_batches(tok, EVAL, len(EVAL), loaded.device)
    config = greedy_config(tok, NEW_TOKENS, [tok.eos_token_id])
    torch.manual_seed(0)
    delta = torch.randn(loaded.hidden_size) * 3.0
    block = decoder_layers(loaded.model)[1]

    def steer(_m: Any, _a: Any, out: Any) -> Any:
        return replace_block_hidden(out, block_hidden(out) + delta)

    def rows(generate: Any) -> list[list[int]]:
        with torch.no_grad():
            ids = generate(**batch.model_inputs(), generation_config=config)
        return new_token_ids(ids, batch.prompt_len, [tok.eos_token_id])

    assert rows(loaded.model.generate) == rows(hf_generate(loaded.model))
    with forward_hook(block, steer):
        fast_steered = rows(loaded.model.generate)
        assert fast_steered == rows(hf_generate(loaded.model))
    assert fast_steered != rows(loaded.model.generate)


def test_every_method_goes_through_the_fast_path(load_tiny: Any) -> None:
    loaded = load_tiny("qwen2")
    (batch,) = make_batches(loaded.tokenizer, EVAL[:2], 2, loaded.device)
    config = greedy_config(loaded.tokenizer, 4, [loaded.tokenizer.eos_token_id])
    for method in ("hooks", "nnsight", "pyvene"):
        before = DECODE_COUNTS.copy()
        make_backend(method, loaded).steered_generate(batch, 1, torch.zeros(loaded.hidden_size), config)
        assert DECODE_COUNTS - before == {"eager": 1}, method


def test_other_configs_and_the_switch_use_transformers(load_tiny: Any) -> None:
    loaded = load_tiny("qwen2")
    (batch,) = make_batches(loaded.tokenizer, EVAL[:2], 2, loaded.device)
    greedy = greedy_config(loaded.tokenizer, 3, [loaded.tokenizer.eos_token_id])
    sampling = greedy_config(loaded.tokenizer, 3, [loaded.tokenizer.eos_token_id])
    sampling.do_sample = True
    assert not is_plain_greedy(sampling)
    before = DECODE_COUNTS.copy()
    with torch.no_grad():
        loaded.model.generate(**batch.model_inputs(), generation_config=sampling)
        # The spec's numerics.decoder "hf" sends plain greedy configs to transformers too.
        set_numerics(loaded.model, dataclasses.replace(DEFAULT_NUMERICS, decoder="hf"))
        try:
            loaded.model.generate(**batch.model_inputs(), generation_config=greedy)
        finally:
            set_numerics(loaded.model, DEFAULT_NUMERICS)
    assert DECODE_COUNTS - before == {"hf_generate": 2}


def test_additive_mask_padding_causality_and_window() -> None:
    kv_valid = torch.tensor([[False, True, True, True, True]])
    mask = additive_mask(kv_valid, torch.arange(5), window=2, dtype=torch.float32)
    visible = (mask[0, 0] == 0).int().tolist()
    assert visible == [
        [1, 0, 0, 0, 0],  # a padding query sees only itself: no empty softmax row
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],  # window 2: keys i-1 and i
        [0, 0, 0, 1, 1],
    ]
    assert mask.shape == (1, 1, 5, 5)


def test_grouped_eager_attention_matches_transformers_eager() -> None:
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from phasegate_runtime.decode import grouped_eager_attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups = 3  # type: ignore[assignment]
    module.head_dim = 8  # type: ignore[assignment]
    query = torch.randn(2, 6, 5, 8, dtype=torch.float64).transpose(1, 2).contiguous().transpose(1, 2)
    key, value = torch.randn(2, 2, 7, 8, dtype=torch.float64), torch.randn(2, 2, 7, 8, dtype=torch.float64)
    mask = torch.zeros(2, 1, 5, 7, dtype=torch.float64).masked_fill(torch.rand(2, 1, 5, 7) < 0.3, -1e30)
    kwargs: dict[str, Any] = {"attention_mask": mask, "scaling": 0.3, "softcap": 2.0}
    ours, _ = grouped_eager_attention(module, query, key, value, **kwargs)
    ref, _ = eager_attention_forward(module, query, key, value, **kwargs)
    torch.testing.assert_close(ours, ref)


def test_a_failed_capture_is_retried_once_with_a_warm_up_then_decoded_without_a_graph() -> None:
    from phasegate_runtime.decode import decode_with_fallbacks

    ids = torch.tensor([[1, 2]])

    def scripted(results: list[tuple[torch.Tensor | None, bool]]) -> tuple[Any, list[bool]]:
        calls: list[bool] = []

        def attempt(use_graph: bool) -> tuple[torch.Tensor | None, bool]:
            calls.append(use_graph)
            return results[len(calls) - 1]

        return attempt, calls

    # Captured straight away (shape warmed before) and failed: warm up and capture again, which works.
    attempt, calls = scripted([(None, False), (ids, True)])
    before = DECODE_COUNTS.copy()
    assert decode_with_fallbacks(attempt, True) is ids
    assert calls == [True, True]
    assert DECODE_COUNTS - before == {"graph_failed": 1}
    # Failed right after its own warm-up: another graph attempt would fail the same way.
    attempt, calls = scripted([(None, True), (ids, False)])
    assert decode_with_fallbacks(attempt, True) is ids
    assert calls == [True, False]
    # Both graph attempts fail: the third runs without one.
    attempt, calls = scripted([(None, False), (None, True), (ids, False)])
    assert decode_with_fallbacks(attempt, True) is ids
    assert calls == [True, True, False]
    # No graph asked for: one attempt.
    attempt, calls = scripted([(ids, False)])
    assert decode_with_fallbacks(attempt, False) is ids
    assert calls == [False]
