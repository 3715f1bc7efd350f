"""Loading the model under test: a Hugging Face id, a local directory, or ``tiny:<arch>``.

All three end the same way: a local directory loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer``.
Hub ids are first resolved to their snapshot directory with ``snapshot_download`` (which honours
``HF_HUB_OFFLINE`` and returns the cached copy offline), so result.json records the exact files used.
``tiny:<arch>`` models are built from ``tiny_seed`` and saved under ``cache_dir`` (see :mod:`.tiny`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .decode import install_fast_generate
from .model_files import resolve_model_path
from .site import decoder_layers
from .site_check import install_site_observer
from .spec import ModelSpec, SpecError

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    resolved_path: str
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str | None
    num_layers: int
    hidden_size: int
    load_s: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("model.device", "cuda requested but no CUDA device is available")
    return torch.device(name)


def default_attn_implementation(model_type: str, requested: str | None) -> str | None:
    if requested is not None:
        return requested
    if model_type in ("gemma2", "gemma3"):
        # Gemma-2 soft-caps attention logits (tanh(x / cap) * cap); SDPA and flash kernels skip that step,
        # so only eager attention computes the model as trained.
        return "eager"
    return None


def load_model(spec: ModelSpec, cache_dir: str) -> LoadedModel:
    started = time.perf_counter()
    device = resolve_device(spec.device)
    path = resolve_model_path(spec, cache_dir)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    attn = default_attn_implementation(config.model_type, spec.attn_implementation)
    kwargs: dict[str, Any] = {"dtype": _DTYPES[spec.dtype]}
    if attn is not None:
        kwargs["attn_implementation"] = attn
    if device.type == "cuda":
        # Straight onto the GPU: no full copy in host memory first (11.9 s against ~3 s for a 7B model from a
        # cold page cache on an H200, issue 16).
        kwargs["device_map"] = str(device)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device.type != "cuda":
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    # Every method's generate (hooks, nnsight, pyvene) and the baseline then share one greedy decoder.
    install_fast_generate(model)
    # Before any steering library wraps a block: nnsight keeps the observer inside its controller.
    install_site_observer(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Left padding puts every prompt's last token at index -1, which the site position relies on.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    hidden_size = int(model.config.hidden_size)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        resolved_path=str(path),
        device=device,
        dtype=_DTYPES[spec.dtype],
        attn_implementation=getattr(model.config, "_attn_implementation", attn),
        num_layers=len(decoder_layers(model)),
        hidden_size=hidden_size,
        load_s=time.perf_counter() - started,
    )
