"""nnsight 0.8: ``trace`` + ``save`` to read the site, ``generate`` + ``tracer.all()`` to steer every step."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import nnsight
import torch
from nnsight.modeling.transformers import TransformersModel
from transformers import GenerationConfig

from .generation import Batch
from .models import LoadedModel
from .site import block_hidden, layer_module_path, replace_block_hidden


class NnsightBackend:
    name: Literal["nnsight"] = "nnsight"

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        # Wrapping the already-loaded module (rather than letting nnsight load by id) keeps one copy of
        # the weights in memory and guarantees all methods run the very same parameters.
        self._wrapped = TransformersModel(loaded.model, tokenizer=loaded.tokenizer)

    def _block(self, layer: int) -> Any:
        envoy: Any = self._wrapped
        for part in layer_module_path(self._loaded.model, layer).split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def activations(
        self, batch: Batch, layer: int, position: int, explicit_positions: bool = True
    ) -> torch.Tensor:
        block = self._block(layer)
        with torch.no_grad(), self._wrapped.trace(batch.read_inputs(explicit_positions)):
            acts = nnsight.save(block_hidden(block.output)[:, position, :].float())
        return torch.as_tensor(acts).cpu().clone()

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        block = self._block(layer)
        with warnings.catch_warnings(), torch.no_grad():
            # An open ``tracer.all()`` loop ends by running past the last decode step, which nnsight
            # reports as a warning by design; the result is read in a second invoke for that reason.
            warnings.filterwarnings("ignore", message=r".*was never reached.*")
            with self._wrapped.generate(generation_config=config) as tracer:
                with tracer.invoke(batch.model_inputs()):
                    for _ in tracer.all():
                        out = block.output
                        block.output = replace_block_hidden(out, block_hidden(out) + delta)
                with tracer.invoke():
                    ids = nnsight.save(tracer.result)
        return torch.as_tensor(ids)


def create(loaded: LoadedModel) -> NnsightBackend:
    return NnsightBackend(loaded)
