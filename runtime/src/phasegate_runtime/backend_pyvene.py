"""pyvene: ``CollectIntervention`` at ``block_output`` to read the site, ``AdditionIntervention`` to steer.

How pyvene 0.1.8's ``generate`` places an intervention (read from ``IntervenableModel.generate`` and its
setter hook): with its defaults (``intervene_on_prompt=False``, no ``unit_locations``) it uses location 0 of
every call *after* the prompt, i.e. it steers the generated tokens only; with explicit ``unit_locations`` and
``intervene_on_prompt=True`` it steers those prompt positions and no generated token. Explicit locations can
name the prompt or the generated tokens, never both in one call. ``unit_locations=None`` is its own "every
position of every call" (the setter's ``None`` branch), which is the protocol's steering; that is what
generation passes (``intervene_on_prompt`` then has no effect). Both defaults, used as they are, fail the
site check (tests/test_proof.py).

pyvene removes every forward hook on the model at each call (``_cleanup_states``), transformers' own
output-capturing hooks included; the site observer therefore wraps ``forward`` instead (:mod:`.site_check`).

pyvene 0.1.8 only knows the model classes in its model card (no Qwen3, Phi-3, ...) and refuses others.
:func:`ensure_block_output_mapping` registers our site, the decoder block output, for any other causal LM,
so the method is adapted rather than dropped for architectures pyvene has not heard of.
"""

from __future__ import annotations

from typing import Any, Literal

import pyvene as pv
import torch
from transformers import GenerationConfig

from .generation import Batch
from .models import LoadedModel
from .site import layer_module_path

_OUTPUT_HOOK = "register_forward_hook"


def ensure_block_output_mapping(model: torch.nn.Module) -> None:
    """Teach pyvene where ``block_output`` lives on a model class it has no card for."""
    from pyvene.models.intervenable_modelcard import type_to_dimension_mapping, type_to_module_mapping

    if type(model) in type_to_module_mapping:
        return
    # "model.layers.0" -> "model.layers[%s]": pyvene formats the layer index into this template.
    parent, _, _ = layer_module_path(model, 0).rpartition(".")
    type_to_module_mapping[type(model)] = {"block_output": (f"{parent}[%s]", _OUTPUT_HOOK)}
    type_to_dimension_mapping[type(model)] = {"block_output": ("hidden_size",)}


class PyveneBackend:
    name: Literal["pyvene"] = "pyvene"

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        ensure_block_output_mapping(loaded.model)

    def _wrap(self, layer: int, intervention: Any) -> Any:
        config = pv.IntervenableConfig(
            representations=[{"layer": layer, "component": "block_output", "intervention": intervention}]
        )
        return pv.IntervenableModel(config, model=self._loaded.model)

    def activations(
        self, batch: Batch, layer: int, position: int, explicit_positions: bool = True
    ) -> torch.Tensor:
        wrapped = self._wrap(layer, pv.CollectIntervention())
        rows = batch.input_ids.shape[0]
        index = batch.prompt_len + position
        with torch.no_grad():
            (_, collected), _ = wrapped(
                batch.read_inputs(explicit_positions), unit_locations={"base": [[[index]] * rows]}
            )
        (acts,) = collected  # one intervention -> one [batch, 1, hidden] tensor
        return torch.as_tensor(acts)[:, 0, :].float().cpu().clone()

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        addition = pv.AdditionIntervention(embed_dim=self._loaded.hidden_size, source_representation=delta)
        wrapped = self._wrap(layer, addition)
        with torch.no_grad():
            _, ids = wrapped.generate(
                batch.model_inputs(),
                unit_locations=None,
                intervene_on_prompt=True,
                generation_config=config,
            )
        return torch.as_tensor(ids)


def create(loaded: LoadedModel) -> PyveneBackend:
    return PyveneBackend(loaded)
