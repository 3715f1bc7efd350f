from __future__ import annotations

from typing import Any

import torch

from phasegate_runtime.generation import (
    decode,
    greedy_config,
    make_batches,
    new_token_ids,
    prompt_positions,
    stop_token_ids,
)
from phasegate_runtime.tiny import build_tokenizer


def test_batches_are_left_padded_and_sized() -> None:
    tok = build_tokenizer()
    batches = make_batches(tok, ["a", "abcd", "xy"], 2, torch.device("cpu"))
    assert [b.prompts for b in batches] == [("a", "abcd"), ("xy",)]
    first = batches[0]
    assert first.input_ids.shape == (2, 4)
    assert first.input_ids[0, :3].tolist() == [tok.pad_token_id] * 3
    assert first.attention_mask[0].tolist() == [0, 0, 0, 1]


def test_greedy_config_is_fresh_and_greedy() -> None:
    config = greedy_config(build_tokenizer(), 5, [258])
    assert (config.do_sample, config.num_beams, config.repetition_penalty) == (False, 1, 1.0)
    assert config.max_new_tokens == 5
    # No checkpoint sampling defaults can be present: nothing was inherited.
    assert config.temperature in (None, 1.0)
    assert config.top_k in (None, 50)
    assert config.top_p in (None, 1.0)


def test_new_tokens_stop_at_eos() -> None:
    tok = build_tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids = torch.tensor([[pad, 65, 66, 67, eos, pad], [65, 65, 68, 69, 70, 71]])
    rows = new_token_ids(ids, 2, [eos])
    assert rows == [[66, 67], [68, 69, 70, 71]]
    assert decode(tok, rows) == [tok.decode([66, 67]), tok.decode([68, 69, 70, 71])]


def test_forward_inputs_count_positions_from_each_rows_first_token() -> None:
    tok = build_tokenizer()
    (batch,) = make_batches(tok, ["a", "abcd"], 2, torch.device("cpu"))
    assert batch.forward_inputs()["position_ids"].tolist() == [[1, 1, 1, 0], [0, 1, 2, 3]]
    assert prompt_positions(torch.tensor([[1, 1]])).tolist() == [[0, 1]]


def test_stop_tokens_come_from_the_generation_config_too(load_tiny: Any) -> None:
    """Instruct checkpoints list end-of-turn ids in generation_config.eos_token_id beside the tokenizer's EOS:
    a row must end at the first of any of them."""
    loaded = load_tiny("qwen2")
    tok, model = loaded.tokenizer, loaded.model
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, 66]
    try:
        stops = stop_token_ids(tok, model)
    finally:
        model.generation_config.eos_token_id = before
    assert stops == sorted({tok.eos_token_id, 66})
    assert greedy_config(tok, 5, stops).eos_token_id == stops
    ids = torch.tensor([[65, 65, 67, 66, 68]])
    assert new_token_ids(ids, 1, stops) == [[65, 67]]
