"""Plain PyTorch forward hooks on decoder block L."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from transformers import GenerationConfig

from .generation import Batch, generate_ids
from .models import LoadedModel
from .site import block_hidden, decoder_layers, replace_block_hidden

Hook = Callable[[nn.Module, Any, Any], Any]


@contextmanager
def forward_hook(module: nn.Module, hook: Hook) -> Iterator[None]:
    """Hooks are global state on the module: removed in ``finally`` so an exception cannot leave one behind
    to silently steer the next method's run."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class HooksBackend:
    name: Literal["hooks"] = "hooks"

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded

    def activations(
        self, batch: Batch, layer: int, position: int, explicit_positions: bool = True
    ) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def capture(_m: nn.Module, _a: Any, output: Any) -> None:
            captured.append(block_hidden(output)[:, position, :].float().cpu().clone())

        block = decoder_layers(self._loaded.model)[layer]
        with forward_hook(block, capture), torch.inference_mode():
            self._loaded.model(**batch.read_inputs(explicit_positions))
        (acts,) = captured
        return acts

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor:
        def add(_m: nn.Module, _a: Any, output: Any) -> Any:
            return replace_block_hidden(output, block_hidden(output) + delta)

        block = decoder_layers(self._loaded.model)[layer]
        with forward_hook(block, add):
            return generate_ids(self._loaded.model, batch, config)


def create(loaded: LoadedModel) -> HooksBackend:
    return HooksBackend(loaded)
