"""The intervention-method interface: every method implements the same two operations.

* ``activations``: the site activation at one prompt position, per row, as float32 ``[batch, hidden]``.
* ``steered_generate``: greedy generation with ``delta`` added to the site output at every position of
  every forward pass (prompt and each decode step); returns prompt + new token ids.

Methods are chosen by name; each lives in its own module (``backend_<name>.py``) and is imported lazily,
so a new method is one new module plus one line in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch
from transformers import GenerationConfig

from .generation import Batch
from .models import LoadedModel
from .spec import MethodName


class Backend(Protocol):
    name: MethodName

    def activations(
        self, batch: Batch, layer: int, position: int, explicit_positions: bool = True
    ) -> torch.Tensor: ...

    def steered_generate(
        self, batch: Batch, layer: int, delta: torch.Tensor, config: GenerationConfig
    ) -> torch.Tensor: ...


_MODULES: dict[str, str] = {
    "hooks": "backend_hooks",
    "nnsight": "backend_nnsight",
    "pyvene": "backend_pyvene",
}


def make_backend(name: MethodName, loaded: LoadedModel) -> Backend:
    module = importlib.import_module(f"{__package__}.{_MODULES[name]}")
    backend: Backend = module.create(loaded)
    return backend
