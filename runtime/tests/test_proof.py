"""parity_pass proves its claim: tries to break it with methods that steer wrongly and with altered files.

Each test runs the real runtime on tiny random-weight models. A method that steers only the prompt, only the
generated tokens, or adds 0.999 x alpha must make parity_pass false with the reason, even where its direction
and (for 0.999) its tokens agree with the others.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvene as pv
import torch
from transformers import GenerationConfig

from phasegate_runtime import runner
from phasegate_runtime.backend import make_backend
from phasegate_runtime.backend_hooks import HooksBackend
from phasegate_runtime.backend_pyvene import PyveneBackend
from phasegate_runtime.events import EventStream
from phasegate_runtime.generation import Batch, generate_ids, make_batches
from phasegate_runtime.models import LoadedModel, load_model
from phasegate_runtime.reference import reference_direction
from phasegate_runtime.score import load_model_result, score
from phasegate_runtime.spec import ModelSpec, ParitySpec, parse_run_spec

from _data import ARCHS, run_spec_dict

PARITY = ParitySpec(min_cosine=0.999999, max_l2=1e-5)


def run_and_score(cache_dir: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    spec = parse_run_spec(run_spec_dict(cache_dir, **overrides))
    path = runner.run(spec, out, EventStream(io.StringIO()))
    scored: dict[str, Any] = score({"m": load_model_result(path)}, PARITY)["models"]["m"]
    return scored


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_carries_its_proof(arch: str, cache_dir: Path, tmp_path: Path) -> None:
    model = {"id": f"tiny:{arch}", "revision": None, "dtype": "float32", "device": "cpu",
             "attn_implementation": None, "tiny_seed": 0}  # fmt: skip
    s = run_and_score(cache_dir, tmp_path, model=model, repeats=1)
    assert s["failures"] == []
    assert s["parity_pass"] is True
    steering = s["steering"]
    assert steering["site_exact"] is True
    assert steering["max_abs_error"] == 0.0
    assert steering["unsteered_max_abs_error"] == 0.0
    assert steering["forward_passes"] > 0
    assert steering["visible"] is True
    assert all(m["within_thresholds"] for m in s["reference"]["methods"].values())
    assert s["native"]["all_identical"] is True
    read_cosines = [m["read_cosine"] for m in s["native"]["methods"].values()]
    assert all(c is not None and c > 0.9999 for c in read_cosines)


class _PromptOnlyPyvene(PyveneBackend):
    """pyvene's generate with explicit prompt locations and ``intervene_on_prompt=True``: prompt only."""

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        addition = pv.AdditionIntervention(embed_dim=self._loaded.hidden_size, source_representation=delta)
        wrapped = self._wrap(layer, addition)
        rows = batch.input_ids.shape[0]
        locations = {"base": [[list(range(batch.prompt_len))]] * rows}
        with torch.no_grad():
            _, ids = wrapped.generate(
                batch.model_inputs(),
                unit_locations=locations,
                intervene_on_prompt=True,
                generation_config=config,
            )
        return torch.as_tensor(ids)


class _DefaultsPyvene(PyveneBackend):
    """pyvene's generate with its defaults: the generated tokens only."""

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        addition = pv.AdditionIntervention(embed_dim=self._loaded.hidden_size, source_representation=delta)
        with torch.no_grad():
            _, ids = self._wrap(layer, addition).generate(batch.model_inputs(), generation_config=config)
        return torch.as_tensor(ids)


class _AlmostHooks(HooksBackend):
    """Plain hooks adding 0.999 x alpha x direction."""

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        return super().steered_generate(batch, layer, delta * 0.999, config)


@pytest.mark.parametrize(
    ("broken", "kind"),
    [(_PromptOnlyPyvene, "prompt only"), (_DefaultsPyvene, "generated tokens only"), (_AlmostHooks, "0.999")],
)
def test_a_method_that_steers_wrongly_fails_parity_with_the_reason(
    broken: type, kind: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make(name: str, loaded: LoadedModel) -> Any:
        return broken(loaded) if name == "pyvene" else make_backend(name, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "make_backend", make)
    s = run_and_score(cache_dir, tmp_path, methods=["hooks", "pyvene"], repeats=1)
    assert s["parity_pass"] is False, kind
    assert s["steering"]["site_exact"] is False
    # The reason names the broken method's units and what the site received.
    site = [f for f in s["failures"] if "steered passes" in f]
    assert site, s["failures"]
    assert all(f.startswith(("pyvene/r0", "native/pyvene")) for f in site), s["failures"]
    assert "raw + alpha x direction" in site[0]
    assert s["methods_passing"] == ["hooks"]
    # Its direction is right: only the steering is wrong, and only the site check can tell for 0.999.
    assert s["reference"]["methods"]["pyvene"]["within_thresholds"] is True


def test_a_flipped_direction_checkpoint_is_recomputed_not_reused(cache_dir: Path, tmp_path: Path) -> None:
    spec = parse_run_spec(run_spec_dict(cache_dir, methods=["hooks"], repeats=1))
    first = runner.run(spec, tmp_path, EventStream(io.StringIO()))
    direction = tmp_path / "directions" / "hooks_r0.npy"
    original = np.load(direction)
    np.save(direction, -original)
    first.unlink()
    events = io.StringIO()
    runner.run(spec, tmp_path, EventStream(events))
    lines = [json.loads(line) for line in events.getvalue().splitlines()]
    invalid = [e for e in lines if e["event"] == "unit_invalid"]
    assert [e["unit"] for e in invalid] == ["hooks/r0"]
    assert "changed since it was written" in invalid[0]["problems"][0]
    np.testing.assert_array_equal(np.load(direction), original)


def test_a_direction_altered_after_the_run_fails_integrity(cache_dir: Path, tmp_path: Path) -> None:
    spec = parse_run_spec(run_spec_dict(cache_dir, methods=["hooks"], repeats=1))
    path = runner.run(spec, tmp_path, EventStream(io.StringIO()))
    direction = tmp_path / "directions" / "hooks_r0.npy"
    np.save(direction, -np.load(direction))
    s = score({"m": load_model_result(path)}, PARITY)["models"]["m"]
    assert s["parity_pass"] is False
    assert s["integrity"]["ok"] is False
    assert any("hooks/r0: directions/hooks_r0.npy changed" in f for f in s["failures"])


def test_pyvene_removes_the_hooks_transformers_records_hidden_states_with(cache_dir: Path) -> None:
    """pyvene removes every forward hook on the model, transformers' output-capturing hooks included, and
    transformers keeps believing they are installed: output_hidden_states would come back empty. The
    reference notices, has them reinstalled and reads the same direction as before. (A model of its own: the
    session's shared one would be left without the hooks for the tests that run after it.)"""
    spec = ModelSpec(
        id="tiny:llama", revision=None, dtype="float32", device="cpu", attn_implementation=None, tiny_seed=0
    )
    loaded = load_model(spec, str(cache_dir))
    args = (loaded.model, loaded.tokenizer, ["a bomb", "steal it"], ["bread", "a song"], 1, -1, 2)
    before = reference_direction(*args).unit

    def capture_hooks() -> int:
        return sum(
            h.__name__ == "output_capturing_hook"
            for m in loaded.model.modules()
            for h in m._forward_hooks.values()
        )

    assert capture_hooks() > 0
    batch = make_batches(loaded.tokenizer, ["hello there"], 2, loaded.device)[0]
    PyveneBackend(loaded).activations(batch, 1, -1)
    assert capture_hooks() == 0
    with torch.no_grad():
        empty = loaded.model(**batch.model_inputs(), output_hidden_states=True).hidden_states
    assert not empty  # the trap: no error, no hidden states
    np.testing.assert_array_equal(reference_direction(*args).unit, before)


class _TwiceInsideTheBlock(HooksBackend):
    """Adds delta inside block L (to its MLP's output) and again at the block output: 2 x delta in all, while
    the hand-off at L looks exactly like raw + delta."""

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        mlp = self._loaded.model.model.layers[layer].mlp
        handle = mlp.register_forward_hook(lambda _m, _a, out: out + delta)
        try:
            return super().steered_generate(batch, layer, delta, config)
        finally:
            handle.remove()


class _AlsoAtBlockZero(HooksBackend):
    """Steers block L correctly, and block 0 as well."""

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        first = self._loaded.model.model.layers[0]
        handle = first.register_forward_hook(lambda _m, _a, out: out + delta)
        try:
            return super().steered_generate(batch, layer, delta, config)
        finally:
            handle.remove()


class _NudgesItsReads(HooksBackend):
    """Reads the site correctly, but while reading adds 1e-6 inside block 0 (to its MLP's output): no hand-off
    shows it, and its direction stays within the parity thresholds of everyone's."""

    def activations(
        self, batch: Batch, layer: int, position: int, explicit_positions: bool = True
    ) -> torch.Tensor:
        mlp = self._loaded.model.model.layers[0].mlp
        handle = mlp.register_forward_hook(lambda _m, _a, out: out + 1e-6)
        try:
            return super().activations(batch, layer, position, explicit_positions)
        finally:
            handle.remove()


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (_TwiceInsideTheBlock, "own output over the prompts differs from the baseline's"),
        (_AlsoAtBlockZero, "changed between blocks other than the site"),
        (_NudgesItsReads, "output in its activation reads differs from the reference's"),
    ],
)
def test_steering_anywhere_but_the_site_is_caught_and_the_others_still_pass(
    broken: type, reason: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an adversarial review: both passed the hand-off check at L alone. The broken method here is
    "hooks", so no method is the yardstick: the two that agree pass, hooks does not."""

    def make(name: str, loaded: LoadedModel) -> Any:
        return broken(loaded) if name == "hooks" else make_backend(name, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "make_backend", make)
    s = run_and_score(cache_dir, tmp_path, repeats=1)
    assert s["parity_pass"] is False
    assert any(f.startswith("hooks/r0") and reason in f for f in s["failures"]), s["failures"]
    assert s["methods_passing"] == ["nnsight", "pyvene"]


class _NeverSteers(HooksBackend):
    """Ignores delta: its generation is the baseline's."""

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        return generate_ids(self._loaded.model, batch, config)


def test_an_alpha_too_small_for_the_dtype_fails_every_unit_not_only_the_method_that_never_steers(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an adversarial probe: alpha 1e-46 (not 0, so the spec took it) made alpha x direction all
    zeros in float32, so steered and unsteered residuals were equal and a method that never steers passed."""

    def make(name: str, loaded: LoadedModel) -> Any:
        return _NeverSteers(loaded) if name == "hooks" else make_backend(name, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "make_backend", make)
    s = run_and_score(cache_dir, tmp_path, repeats=1, steering={"alpha": 1e-46, "min_changed_fraction": 0.1})
    assert s["parity_pass"] is False
    assert s["methods_passing"] == []
    assert any("steering.alpha: 1e-46 x the direction does not fit" in f for f in s["failures"]), s[
        "failures"
    ]
