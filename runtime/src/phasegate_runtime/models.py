"""Loading the model under test: a Hugging Face id, a local directory, or ``tiny:<arch>``.

All three end the same way: a local directory loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer``.
Hub ids are first resolved to their snapshot directory with ``snapshot_download`` (which honours
``HF_HUB_OFFLINE`` and returns the cached copy offline), so result.json records the exact files used.
``tiny:<arch>`` models are built from ``tiny_seed`` and saved under ``cache_dir`` (see :mod:`.tiny`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .decode import install_fast_generate
from .site import decoder_layers
from .site_check import install_site_observer
from .spec import TINY_ARCHS, ModelSpec, SpecError, TinyArch
from .tiny import ensure_tiny_model

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Only what a causal LM and its tokenizer need: repos often ship both .bin and .safetensors copies.
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
_NO_WEIGHTS = [p for p in _ALLOW_PATTERNS if p != "*.safetensors"]


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


def resolve_model_path(spec: ModelSpec, cache_dir: str, *, weights: bool = True) -> Path:
    """The local directory of the model; ``weights=False`` fetches a hub model's config and tokenizer only
    (the preflight's view). Errors no retry can fix are invalid specs."""
    if spec.id.startswith("tiny:"):
        arch = spec.id.removeprefix("tiny:")
        if arch not in TINY_ARCHS:
            raise SpecError(
                "model.id", f"unknown tiny arch {arch!r}; expected one of {', '.join(TINY_ARCHS)}"
            )
        return ensure_tiny_model(cache_dir, cast(TinyArch, arch), spec.tiny_seed)
    local = Path(spec.id)
    if local.is_dir():
        return local.resolve()
    if local.is_absolute() or spec.id.startswith("."):
        raise SpecError("model.id", f"local path does not exist: {spec.id}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    # Errors no retry can fix are invalid specs (exit 2, not retried): a retry would pay for the GPU again.
    try:
        return Path(
            snapshot_download(
                spec.id,
                revision=spec.revision,
                cache_dir=cache_dir,
                allow_patterns=_ALLOW_PATTERNS if weights else _NO_WEIGHTS,
            )
        )
    except GatedRepoError as err:
        raise SpecError(
            "model.id",
            f"{spec.id} is gated: accept its licence at https://huggingface.co/{spec.id} with the account "
            "whose HF_TOKEN the runtime uses",
        ) from err
    except RepositoryNotFoundError as err:  # also what the hub answers for a private repo without access
        raise SpecError(
            "model.id", f"{spec.id} not found on the hub, or HF_TOKEN has no access to it"
        ) from err
    except HFValidationError as err:
        raise SpecError("model.id", f"not a hub model id: {err}") from err


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
