"""The preflight: what can be known invalid before any GPU second is paid, checked on a CPU.

A run spec can be invalid by definition in ways only the model can tell: a site layer past the model's
depth, a prompt shorter than the site position reaches back, an unknown ``tiny:`` architecture, a hub id the
hub client rejects or cannot find. The runner checks all of them after loading, on the GPU; :func:`preflight`
checks the same rules (:func:`check_site`, shared with the runner) from the model's config and tokenizer
alone (:func:`.model_files.resolve_model_path` without weights), so that the workflow refuses such a phase
before dispatching it. Identical harmful and harmless prompt sets are refused too (no direction). It imports
no modelling code (transformers' config and tokenizer only): about half the CPU of importing the runner.

A hub model whose config cannot be fetched here (no network on this worker, say) is not a verdict: the result
says it was not checked and why, and the run's own checks still apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .spec import RunSpec, SpecError


@dataclass(frozen=True)
class Preflight:
    checked: bool
    num_layers: int | None
    note: str | None


def check_site(spec: RunSpec, num_layers: int, tokenizer: Any) -> None:
    """The site's rules against the model (invalid-spec errors): the layer exists, and every contrast prompt
    reaches back as far as ``site.position``."""
    if spec.site.layer >= num_layers:
        raise SpecError("site.layer", f"must be < num_hidden_layers ({num_layers})")
    reach = -spec.site.position
    for field in ("harmful", "harmless"):
        for i, prompt in enumerate(getattr(spec.prompts, field)):
            n = len(tokenizer(prompt)["input_ids"])
            if n < reach:
                raise SpecError(
                    f"prompts.{field}[{i}]",
                    f"has {n} tokens, fewer than site.position ({spec.site.position}) reaches back",
                )


def _config_and_tokenizer(spec: RunSpec) -> tuple[Any, Any] | str:
    """The model's config and tokenizer without its weights, or why they could not be fetched here."""
    from transformers import AutoConfig, AutoTokenizer

    from .model_files import resolve_model_path

    try:
        path = resolve_model_path(spec.model, spec.cache_dir, weights=False)
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - offline or the hub unreachable here: not a verdict on the spec
        return f"the model's config could not be fetched here ({type(err).__name__}); the run checks it"
    return AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def preflight(spec: RunSpec) -> Preflight:
    if set(spec.prompts.harmful) == set(spec.prompts.harmless):
        raise SpecError(
            "prompts.harmless", "is the same prompt set as prompts.harmful: there is no direction"
        )
    found = _config_and_tokenizer(spec)
    if isinstance(found, str):
        return Preflight(checked=False, num_layers=None, note=found)
    config, tokenizer = found
    num_layers = int(config.get_text_config(decoder=True).num_hidden_layers)
    check_site(spec, num_layers, tokenizer)
    return Preflight(checked=True, num_layers=num_layers, note=None)
