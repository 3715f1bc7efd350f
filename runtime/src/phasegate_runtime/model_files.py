"""Where a model's files are: a ``tiny:<arch>`` build, a local directory, or a hub snapshot.

Kept apart from :mod:`.models` (which imports torch and transformers' modelling code, seconds of CPU) so that
the preflight and the Modal prefetch resolve a model without paying for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from .spec import TINY_ARCHS, ModelSpec, SpecError, TinyArch

# Only what a causal LM and its tokenizer need: repos often ship both .bin and .safetensors copies.
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
_NO_WEIGHTS = [p for p in _ALLOW_PATTERNS if p != "*.safetensors"]


def resolve_model_path(spec: ModelSpec, cache_dir: str, *, weights: bool = True) -> Path:
    """The local directory of the model; ``weights=False`` fetches a hub model's config and tokenizer only
    (the preflight's view). Errors no retry can fix are invalid specs."""
    if spec.id.startswith("tiny:"):
        arch = spec.id.removeprefix("tiny:")
        if arch not in TINY_ARCHS:
            raise SpecError(
                "model.id", f"unknown tiny arch {arch!r}; expected one of {', '.join(TINY_ARCHS)}"
            )
        from .tiny import ensure_tiny_model

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
