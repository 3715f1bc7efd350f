"""Parity of the three methods on tiny qwen2, gemma2 and llama, against an independent reference."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from nnsight.intervention.interleaver import OutOfOrderError

from phasegate_runtime.backend import make_backend
from phasegate_runtime.direction import compute_direction, steering_delta
from phasegate_runtime.generation import Batch, generate_ids, greedy_config, make_batches
from phasegate_runtime.runner import fast_reads
from phasegate_runtime.site import blocks_through, decoder_layers
from phasegate_runtime.site_check import site_observer

from _data import ARCHS, EVAL, HARMFUL, HARMLESS

METHODS = ("hooks", "nnsight", "pyvene")
LAYER = 1


def reference_direction(loaded: Any, batch_size: int) -> torch.Tensor:
    """From output_hidden_states, independent of any hook: hidden_states[L + 1] at the last token."""

    def mean(prompts: list[str]) -> torch.Tensor:
        rows = []
        for batch in make_batches(loaded.tokenizer, prompts, batch_size, loaded.device):
            with torch.no_grad():
                out = loaded.model(**batch.model_inputs(), output_hidden_states=True)
            rows.append(out.hidden_states[LAYER + 1][:, -1, :].float())
        return torch.cat(rows).mean(dim=0)

    diff = mean(HARMFUL) - mean(HARMLESS)
    return diff / diff.norm()


def no_eos_config(loaded: Any, max_new_tokens: int = 6) -> Any:
    # Without EOS every row runs the full length, so the comparison covers every step's tokens.
    config = greedy_config(loaded.tokenizer, max_new_tokens, [])
    config.eos_token_id = None
    return config


def eval_batches(loaded: Any) -> list[Batch]:
    return make_batches(loaded.tokenizer, EVAL, 2, loaded.device)


@pytest.fixture(scope="module", params=ARCHS)
def arch_setup(request: pytest.FixtureRequest, load_tiny: Any) -> dict[str, Any]:
    loaded = load_tiny(request.param)
    harmful = make_batches(loaded.tokenizer, HARMFUL, 3, loaded.device)
    harmless = make_batches(loaded.tokenizer, HARMLESS, 3, loaded.device)
    directions = {
        m: compute_direction(make_backend(m, loaded), harmful, harmless, LAYER, -1) for m in METHODS
    }
    return {"loaded": loaded, "directions": directions}


def test_directions_agree_with_each_other_and_reference(arch_setup: dict[str, Any]) -> None:
    ref = reference_direction(arch_setup["loaded"], 3)
    for method, direction in arch_setup["directions"].items():
        got = torch.from_numpy(direction.unit)
        assert abs(float(got.norm()) - 1.0) < 1e-6
        assert float((got - ref).norm()) <= 1e-6, method
    h = torch.from_numpy(arch_setup["directions"]["hooks"].unit)
    for method in ("nnsight", "pyvene"):
        assert float((torch.from_numpy(arch_setup["directions"][method].unit) - h).norm()) <= 1e-6


def test_direction_is_not_another_layer(arch_setup: dict[str, Any]) -> None:
    # Guards the test itself: the reference must distinguish layers, or the parity check is vacuous.
    loaded = arch_setup["loaded"]
    batch = make_batches(loaded.tokenizer, HARMFUL, 4, loaded.device)[0]
    with torch.no_grad():
        hs = loaded.model(**batch.model_inputs(), output_hidden_states=True).hidden_states
    acts = make_backend("hooks", loaded).activations(batch, LAYER, -1)
    assert torch.allclose(acts, hs[LAYER + 1][:, -1].float(), atol=1e-6)
    assert not torch.allclose(acts, hs[LAYER][:, -1].float(), atol=1e-3)


def _generate_all(loaded: Any, delta: torch.Tensor) -> dict[str, list[list[int]]]:
    config = no_eos_config(loaded)
    out: dict[str, list[list[int]]] = {}
    for method in METHODS:
        backend = make_backend(method, loaded)
        out[method] = [
            row
            for b in eval_batches(loaded)
            for row in backend.steered_generate(b, LAYER, delta, config).tolist()
        ]
    return out


def _baseline(loaded: Any) -> list[list[int]]:
    config = no_eos_config(loaded)
    return [row for b in eval_batches(loaded) for row in generate_ids(loaded.model, b, config).tolist()]


def test_steered_outputs_identical_across_methods_and_change_baseline(arch_setup: dict[str, Any]) -> None:
    loaded = arch_setup["loaded"]
    delta = steering_delta(arch_setup["directions"]["hooks"].unit, 12.0, loaded.dtype, loaded.device)
    outs = _generate_all(loaded, delta)
    assert outs["nnsight"] == outs["hooks"] == outs["pyvene"]
    baseline = _baseline(loaded)
    assert outs["hooks"] != baseline
    # Steering must act on decode steps too, not only the prompt: steering the prompt alone
    # (one forward) would give a different continuation after the first new token.
    prompt_only = []
    block = loaded.model.model.layers[LAYER]
    calls = {"n": 0}

    def first_forward_only(_m: Any, _a: Any, output: Any) -> Any:
        calls["n"] += 1
        return output + delta if calls["n"] == 1 else output

    handle = block.register_forward_hook(first_forward_only)
    try:
        prompt_only = generate_ids(loaded.model, eval_batches(loaded)[0], no_eos_config(loaded)).tolist()
    finally:
        handle.remove()
    assert prompt_only != outs["hooks"][: len(prompt_only)]


def test_alpha_zero_leaves_outputs_unchanged(arch_setup: dict[str, Any]) -> None:
    loaded = arch_setup["loaded"]
    # A zero delta (steering_delta refuses alpha 0, so it is made here): every backend's output is the
    # baseline's.
    delta = torch.zeros(loaded.hidden_size, dtype=loaded.dtype, device=loaded.device)
    outs = _generate_all(loaded, delta)
    baseline = _baseline(loaded)
    for method in METHODS:
        assert outs[method] == baseline, method


def test_no_hook_left_behind(arch_setup: dict[str, Any]) -> None:
    loaded = arch_setup["loaded"]
    block = loaded.model.model.layers[LAYER]
    # transformers records output_hidden_states with hooks of its own, installed once and left in place.
    ours = [h for h in block._forward_hooks.values() if h.__name__ != "output_capturing_hook"]
    assert not ours


@contextmanager
def counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts calls of ``module``'s forward (an instance attribute: pyvene removes hooks, not this)."""
    calls = [0]
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        module.forward = original  # type: ignore[method-assign]


@pytest.mark.parametrize("method", METHODS)
def test_fast_reads_stop_after_the_site_equal_full_reads_and_run_no_later_block(
    method: str, arch_setup: dict[str, Any]
) -> None:
    loaded = arch_setup["loaded"]
    backend = make_backend(method, loaded)  # type: ignore[arg-type]
    observer = site_observer(loaded.model)
    batches = make_batches(loaded.tokenizer, HARMFUL, 3, loaded.device)
    full = [backend.activations(b, LAYER, -1) for b in batches]
    later = decoder_layers(loaded.model)[LAYER + 1]
    with (
        counting_calls(later) as calls,
        observer.watch(LAYER, None, loaded.device, stops_after_site=True) as check,
        fast_reads(loaded.model, LAYER),
    ):
        stopped = [backend.activations(b, LAYER, -1) for b in batches]
    for a, b in zip(full, stopped, strict=True):
        assert torch.equal(a, b)
    assert calls[0] == 0
    assert loaded.model.config.num_hidden_layers == len(decoder_layers(loaded.model))  # restored
    # The hand-off at the site is still checked (the final norm receives it), in every pass.
    assert check[0].exact
    assert check[0].checked_passes == check[0].forward_passes == len(batches)


# What each library raises when asked for a block that never ran.
_NEVER_RAN: dict[str, type[Exception]] = {"hooks": ValueError, "nnsight": OutOfOrderError, "pyvene": KeyError}


@pytest.mark.parametrize("method", METHODS)
def test_a_read_of_a_later_block_fails_when_reads_stop_at_the_site(
    method: str, arch_setup: dict[str, Any]
) -> None:
    """An off-by-one read past the site must not quietly return the site's own values."""
    loaded = arch_setup["loaded"]
    backend = make_backend(method, loaded)  # type: ignore[arg-type]
    batch = make_batches(loaded.tokenizer, HARMFUL, 3, loaded.device)[0]
    with blocks_through(loaded.model, LAYER), pytest.raises(_NEVER_RAN[method]):
        backend.activations(batch, LAYER + 1, -1)
    assert loaded.model.config.num_hidden_layers == len(decoder_layers(loaded.model))  # restored on error


def test_an_edit_at_the_site_is_caught_in_a_read_that_stops_there(arch_setup: dict[str, Any]) -> None:
    """Stopped after the site, the check at the site still bites: here a hook adds 1e-3 to block L's output
    during a read (after the observer saw it), and the unsteered read's error is no longer zero."""
    loaded = arch_setup["loaded"]
    batch = make_batches(loaded.tokenizer, HARMFUL, 3, loaded.device)[0]
    block = decoder_layers(loaded.model)[LAYER]
    handle = block.register_forward_hook(lambda _m, _a, out: out + 1e-3)
    try:
        with (
            site_observer(loaded.model).watch(LAYER, None, loaded.device, stops_after_site=True) as check,
            blocks_through(loaded.model, LAYER),
        ):
            make_backend("hooks", loaded).activations(batch, LAYER, -1)
    finally:
        handle.remove()
    assert check[0].checked_passes == 1
    assert check[0].max_abs_error > 0
    assert not check[0].exact


def test_a_pass_that_stops_after_the_site_fails_the_check_where_the_watch_does_not_allow_it(
    arch_setup: dict[str, Any],
) -> None:
    """Found by an independent review: a pass cut short at block L must not pass as checked outside the
    fast reads; and steered work may not be watched as stopping there at all."""
    loaded = arch_setup["loaded"]
    observer = site_observer(loaded.model)
    batch = make_batches(loaded.tokenizer, HARMFUL, 3, loaded.device)[0]
    with observer.watch(LAYER, None, loaded.device) as check, blocks_through(loaded.model, LAYER):
        make_backend("hooks", loaded).activations(batch, LAYER, -1)
    assert check[0].forward_passes == 1
    assert check[0].checked_passes == 0
    assert not check[0].exact
    delta = torch.zeros(loaded.hidden_size, dtype=loaded.dtype)
    with (
        pytest.raises(ValueError, match="only unsteered reads"),
        observer.watch(LAYER, delta, loaded.device, stops_after_site=True),
    ):
        pass
