"""The steering site, defined once.

"Layer L" is the output of decoder block L, i.e. ``hidden_states[L + 1]`` of a forward pass with
``output_hidden_states=True`` (``hidden_states[0]`` is the embedding output). This is the residual stream
after block L; every method reads and writes exactly this tensor.

Decoder blocks return either a tuple ``(hidden, ...)`` (transformers 4) or the hidden tensor itself
(transformers 5). ``output[0]`` on a tensor silently selects batch row 0 instead of the hidden states, so
all access goes through :func:`block_hidden` / :func:`replace_block_hidden`, which branch on the type.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def decoder(model: nn.Module) -> Any:
    """The decoder stack of a causal LM (``model.model`` for llama-family models): blocks and final norm."""
    get_decoder = getattr(model, "get_decoder", None)
    return get_decoder() if callable(get_decoder) else getattr(model, "model", None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers`` for llama-family models)."""
    layers = getattr(decoder(model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"cannot find decoder layers on {type(model).__name__}")
    return layers


@contextmanager
def blocks_through(model: nn.Module, layer: int) -> Iterator[None]:
    """Inside, a forward pass runs decoder blocks 0 to ``layer`` only, then the final norm and the head.

    For the fast units' activation reads: block ``layer``'s output cannot depend on a later block, so the
    blocks after it are work whose result nobody reads (about half the model at the protocol's sites). The
    values read are bit for bit those of a full pass (tests compare them), a read of any later block finds
    nothing to read and fails, and the site observer still checks the hand-off at the site (the final norm
    then receives it). transformers' decoders run ``self.layers[: config.num_hidden_layers]``; the count is
    lowered while inside and restored after, on error too. A decoder that ignores the count simply runs
    every block: slower, never different.
    """
    config: Any = getattr(decoder(model), "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int) or not 0 <= layer < count:
        yield
        return
    config.num_hidden_layers = layer + 1
    try:
        yield
    finally:
        config.num_hidden_layers = count


def layer_module_path(model: nn.Module, layer: int) -> str:
    """Dotted path of block ``layer`` inside ``model`` (for libraries that address modules by name)."""
    target = decoder_layers(model)[layer]
    for name, module in model.named_modules():
        if module is target:
            return str(name)
    raise LookupError(f"decoder layer {layer} not found in module tree")


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden-state tensor ``[batch, seq, hidden]`` from a decoder block's output."""
    hidden = output if isinstance(output, torch.Tensor) else output[0]
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise TypeError(f"unexpected decoder block output: {type(output).__name__}")
    return hidden


def replace_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The block output with its hidden states replaced, in the same container type."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])
