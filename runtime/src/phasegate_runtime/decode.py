"""The fast greedy decoder: a static KV cache, precomputed masks, and a CUDA graph per decode step.

``model.generate`` is launch-bound for a 7B model at batch 30: each decode step issues thousands of small
kernels from Python (tens of ms) while reading the weights once takes a few ms. This decoder keeps every
decode step's tensors at fixed addresses (a static cache, a fixed-length additive mask, position and token
buffers advanced in place on the device) so the step can be captured once per call as a CUDA graph and
replayed, with no host synchronisation inside the step.

Steering stays each library's own mechanism: forward hooks, nnsight's interleaver and pyvene's hooks all
run during the eager prefill and the captured step (and, the first time a shape is seen in a process, an
eager warm-up step before the capture), so their additions are recorded into the graph and replayed at every
later step (the delta is added at every position of every forward). Where capture fails (a library doing
host work inside the step), the same loop runs eagerly: the same kernels, so outputs stay identical to the
graph path, only slower. :data:`DECODE_COUNTS` records which. Inside decode steps on CUDA, compiled fused
kernels run as ``numerics.fused_kernels`` says (:mod:`.fused`): by default only the bit-exact pieces.

Greedy semantics follow ``transformers``: argmax of the last logits, rows that produced EOS emit the pad id
afterwards, and decoding stops once every row is finished (checked every few steps; any extra columns are
pad). Only plain greedy configs take this path; anything else goes to the original ``generate``.
"""

from __future__ import annotations

import functools
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, GenerationConfig, PreTrainedModel
from transformers.cache_utils import Cache, StaticLayer

from . import fused
from .determinism import without_nan_fill
from .generation import prompt_positions
from .spec import DEFAULT_NUMERICS, NumericsSpec

DECODE_COUNTS: Counter[str] = Counter()
"""Calls per path: ``cuda_graph``, ``eager`` and ``hf_generate``; ``graph_failed`` counts failed captures
(each followed by another attempt, see :func:`decode_with_fallbacks`)."""

_STOP_CHECK_EVERY = 8
_ShapeKey = tuple[int, int, str, bool, str, str]
_HF_GENERATE = "_phasegate_hf_generate"
_NUMERICS = "_phasegate_numerics"
# Generation settings that change the decoding rule; the fast path only accepts their greedy values.
_GREEDY_VALUES: dict[str, tuple[Any, ...]] = {
    "do_sample": (False, None),
    "num_beams": (1, None),
    "num_return_sequences": (1, None),
    "repetition_penalty": (1.0, None),
    "encoder_repetition_penalty": (1.0, None),
    "no_repeat_ngram_size": (0, None),
    "min_length": (0, None),
    "min_new_tokens": (0, None),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
    "output_scores": (False, None),
    "output_logits": (False, None),
    "return_dict_in_generate": (False, None),
}
_ACCEPTED_KWARGS = {"input_ids", "inputs", "attention_mask", "generation_config", "streamer", "position_ids"}


def numerics_of(model: torch.nn.Module) -> NumericsSpec:
    """The numerics switches a model decodes with (:func:`set_numerics`; the spec defaults until set)."""
    numerics = getattr(model, _NUMERICS, None)
    return numerics if isinstance(numerics, NumericsSpec) else DEFAULT_NUMERICS


def set_numerics(model: torch.nn.Module, numerics: NumericsSpec) -> None:
    """Set from the run spec (``numerics``) by the runner: the only way to change how the model decodes."""
    setattr(model, _NUMERICS, numerics)


def is_plain_greedy(config: GenerationConfig) -> bool:
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        return False
    return all(getattr(config, name, None) in allowed for name, allowed in _GREEDY_VALUES.items())


def _eos_ids(config: GenerationConfig) -> list[int]:
    eos = config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def additive_mask(
    kv_valid: torch.Tensor, q_index: torch.Tensor, window: int | None, dtype: torch.dtype
) -> torch.Tensor:
    """``[batch, 1, queries, cache_len]`` additive mask: key j is visible to the query at cache index i when
    it holds a real token, ``j <= i`` and (sliding layers) ``j > i - window``. Each query also sees itself,
    so a padding query never has an empty row (an all-masked softmax would put NaN into the cache)."""
    keys = torch.arange(kv_valid.shape[1], device=kv_valid.device)
    k, q = keys[None, None, :], q_index[None, :, None]
    allowed = kv_valid[:, None, :] & (k <= q)
    if window is not None:
        allowed = allowed & (k > q - window)
    allowed = allowed | (k == q)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=kv_valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _mask_argument(model: PreTrainedModel, kv_valid: torch.Tensor, q_index: torch.Tensor) -> Any:
    """A prepared 4D mask is used as-is by transformers' mask builders; models with sliding-window layers
    (gemma2) take a per-layer-type mapping instead."""
    config = model.config.get_text_config(decoder=True)
    full = additive_mask(kv_valid, q_index, None, model.dtype)
    if "sliding_attention" not in (getattr(config, "layer_types", None) or []):
        return full
    window = int(config.sliding_window)
    return {
        "full_attention": full,
        "sliding_attention": additive_mask(kv_valid, q_index, window, model.dtype),
    }


@contextmanager
def _unique_index_writes() -> Iterator[None]:
    if not torch.are_deterministic_algorithms_enabled():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)


class _StaticLayer(StaticLayer):
    """transformers' static layer; its write of the new keys/values hits distinct cache slots (consecutive
    positions), so the plain ``index_copy_`` kernel is already deterministic: each element is written once,
    with no accumulation. Deterministic mode would swap in a sort-based kernel (a radix sort and bounds
    asserts per layer per step) that computes the very same result."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        # A decode step's one position: one kernel in place of five (:func:`.fused.cache_write`).
        keys, values = self.keys, self.values
        one_position = self.is_initialized and key_states.shape[-2] == 1
        if (
            one_position
            and keys is not None
            and values is not None
            and fused.cache_write(keys, values, key_states, value_states, self.cumulative_length)
        ):
            return keys, values
        with _unique_index_writes():
            return super().update(key_states, value_states, *args, **kwargs)


def grouped_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (soft-capping included) without ``repeat_kv``.

    ``repeat_kv`` copies every key/value head's whole static cache once per query head group, per layer, per
    step: for Gemma-2-9B the largest kernel of a decode step. Folding the query heads of a group into the
    query axis reads each cached head once instead; the arithmetic per score is the same dot product
    (:func:`.fused.grouped_attention`, compiled inside decode steps).
    """
    if scaling is None:
        scaling = float(getattr(module, "head_dim", query.shape[-1])) ** -0.5
    return fused.grouped_attention(query, key, value, attention_mask, float(scaling), softcap)  # type: ignore[no-any-return]


_GROUPED_EAGER = "phasegate_grouped_eager"
AttentionInterface.register(_GROUPED_EAGER, grouped_eager_attention)


@contextmanager
def _grouped_eager(model: PreTrainedModel) -> Iterator[None]:
    """Inside the decoder, eager attention with grouped KV heads runs :func:`grouped_eager_attention`."""
    config = model.config.get_text_config(decoder=True)
    grouped = int(getattr(config, "num_key_value_heads", 0) or 0) < int(config.num_attention_heads)
    if not (numerics_of(model).grouped_eager and grouped and config._attn_implementation == "eager"):
        yield
        return
    config._attn_implementation = _GROUPED_EAGER
    try:
        yield
    finally:
        config._attn_implementation = "eager"


def _static_cache(model: PreTrainedModel, max_len: int) -> Cache:
    """A full-length static layer for every block (sliding layers too): the sliding window is applied by
    the mask, so cache indices equal positions for every layer and one mask shape serves them all."""
    n_layers = int(model.config.get_text_config(decoder=True).num_hidden_layers)
    return Cache(layers=[_StaticLayer(max_cache_len=max_len) for _ in range(n_layers)])


class _Decoder:
    """Buffers of one ``greedy_generate`` call; ``step`` reads and advances them on the device only."""

    def __init__(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        eos_ids: list[int],
        pad_id: int,
    ) -> None:
        self.model = model
        batch, prompt_len = input_ids.shape
        dev = input_ids.device
        self.prompt_len = prompt_len
        self.cache = _static_cache(model, prompt_len + max_new_tokens)
        prompt_valid = attention_mask.to(dtype=torch.bool)
        self.kv_valid = torch.cat(
            [prompt_valid, torch.ones(batch, max_new_tokens, dtype=torch.bool, device=dev)], dim=1
        )
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=dev)
        self.pad = torch.tensor(pad_id, dtype=torch.long, device=dev)
        self.prompt_positions = prompt_positions(attention_mask)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.position = self.prompt_positions[:, -1:].clone()
        self.index = torch.full((1,), prompt_len - 1, dtype=torch.long, device=dev)
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=dev)
        self.fused = fused.fused_mode(numerics_of(model).fused_kernels, dev)
        # What a CUDA graph capture of this step needs to have run once before (compilation of the fused
        # kernels, cuBLAS workspaces, kernel selection): the same model, shapes and modes. Deterministic
        # mode, the attention implementation and the dtype are part of what compiled kernels depend on.
        text_config = model.config.get_text_config(decoder=True)
        self.shape_key: _ShapeKey = (
            batch, prompt_len + max_new_tokens, self.fused, torch.are_deterministic_algorithms_enabled(),
            str(text_config._attn_implementation), str(model.dtype),
        )  # fmt: skip

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, q_index: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=_mask_argument(self.model, self.kv_valid, q_index),
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return torch.as_tensor(out.logits)[:, -1, :]

    def _accept(self, logits: torch.Tensor) -> None:
        chosen = torch.where(self.unfinished, logits.argmax(dim=-1), self.pad)
        self.unfinished &= ~torch.isin(chosen, self.eos)
        self.token.copy_(chosen[:, None])

    def prefill(self, input_ids: torch.Tensor) -> None:
        q_index = torch.arange(self.prompt_len, device=input_ids.device)
        self._accept(self._forward(input_ids, self.prompt_positions, q_index))

    def step(self) -> None:
        """Feed the last chosen token, choose the next; every tensor it touches stays where it is."""
        self.position.add_(1)
        self.index.add_(1)
        with fused.decode_steps(self.fused):
            self._accept(self._forward(self.token, self.position, self.index))


_WARMED: weakref.WeakKeyDictionary[torch.nn.Module, set[_ShapeKey]] = weakref.WeakKeyDictionary()
"""Per model, the step shapes already run once outside a capture in this process."""


def _warm_up(decoder: _Decoder) -> None:
    """One eager step on a side stream (the pattern torch.cuda.graphs documents), before the first capture
    of a shape: it compiles the fused kernels and sets up cuBLAS for the shape. It also yields a token."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decoder.step()
    torch.cuda.current_stream().wait_stream(side)
    _WARMED.setdefault(decoder.model, set()).add(decoder.shape_key)


def _capture(decoder: _Decoder) -> torch.cuda.CUDAGraph:
    """Records one step. Compiling inside a capture is unsafe (Inductor launches and times kernels), so a
    fused kernel that would need compiling raises instead (a RuntimeError), and the caller tries again."""
    graph = torch.cuda.CUDAGraph()
    with torch.compiler.set_stance("fail_on_recompile"), torch.cuda.graph(graph):
        decoder.step()
    return graph


def greedy_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    streamer: Any = None,
) -> torch.Tensor:
    """Prompt + greedy continuation ids ``[batch, prompt_len + n]``, ``n <= max_new_tokens``."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    max_new = int(config.max_new_tokens or 0)
    eos_ids = _eos_ids(config)
    pad_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    use_graph = input_ids.device.type == "cuda" and numerics_of(model).cuda_graphs and max_new > 2
    # Inference mode whoever calls (the runner's generate does; nnsight's runs under no_grad): compiled
    # kernels are specialised on it, so one mode means one compilation per shape.
    args = (model, input_ids, attention_mask, max_new, eos_ids, int(pad_id), streamer)
    with torch.inference_mode(), without_nan_fill(), _grouped_eager(model):
        return decode_with_fallbacks(lambda graph: _decode(*args, use_graph=graph), use_graph)


def decode_with_fallbacks(
    attempt: Callable[[bool], tuple[torch.Tensor | None, bool]], use_graph: bool
) -> torch.Tensor:
    """``attempt(use_graph)`` returns (ids, or None if its CUDA graph capture failed; whether it ran a
    warm-up step). A capture that failed without a warm-up in that attempt is tried once more, now with
    one (it compiles whatever changed); a capture that failed after one will fail again, so the decode
    runs without a graph. Each retry decodes from the prompt again (a streamer sees it twice)."""
    ids, warmed = attempt(use_graph)
    if ids is None and not warmed:
        DECODE_COUNTS["graph_failed"] += 1
        ids, warmed = attempt(True)
    if ids is None:
        DECODE_COUNTS["graph_failed"] += 1
        ids, _ = attempt(False)
    if ids is None:
        raise AssertionError("a decode without a graph always returns ids")
    return ids


def _decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new: int,
    eos_ids: list[int],
    pad_id: int,
    streamer: Any,
    use_graph: bool,
) -> tuple[torch.Tensor | None, bool]:
    """One full decode: (ids, or None if the CUDA graph could not be captured; whether it warmed up)."""
    decoder = _Decoder(model, input_ids, attention_mask, max_new, eos_ids, pad_id)
    if streamer is not None:
        streamer.put(input_ids)
    decoder.prefill(input_ids)
    tokens = [decoder.token.clone()]
    run_step: Callable[[], None] = decoder.step
    graph: torch.cuda.CUDAGraph | None = None
    warmed = False
    for n in range(1, max_new):
        if n % _STOP_CHECK_EVERY == 0 and not bool(decoder.unfinished.any()):
            break
        if streamer is not None:
            streamer.put(tokens[-1][:, 0])
        if use_graph and graph is None:
            if decoder.shape_key not in _WARMED.get(model, set()):
                _warm_up(decoder)
                warmed = True
            else:
                # Every later call with this shape captures its first step straight away: a warm-up
                # step costs as much as an eager decode step (tens of ms of Python), once per pass.
                try:
                    graph = _capture(decoder)
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError:
                    _WARMED.get(model, set()).discard(decoder.shape_key)
                    return None, warmed
                run_step = graph.replay
                run_step()
        else:
            run_step()
        tokens.append(decoder.token.clone())
    if streamer is not None:
        streamer.put(tokens[-1][:, 0])
        streamer.end()
    DECODE_COUNTS["cuda_graph" if graph is not None else "eager"] += 1
    return torch.cat([input_ids, *tokens], dim=1), warmed


def fast_generate(model: PreTrainedModel, hf_generate: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``model.generate`` with plain greedy configs routed to :func:`greedy_generate`."""
    config = kwargs.get("generation_config")
    input_ids = kwargs.get("input_ids", kwargs.get("inputs"))
    if (
        numerics_of(model).decoder != "fast"
        or args
        or not isinstance(config, GenerationConfig)
        or not isinstance(input_ids, torch.Tensor)
        or set(kwargs) - _ACCEPTED_KWARGS
        or not is_plain_greedy(config)
    ):
        DECODE_COUNTS["hf_generate"] += 1
        return hf_generate(*args, **kwargs)
    return greedy_generate(model, input_ids, kwargs.get("attention_mask"), config, kwargs.get("streamer"))


def install_fast_generate(model: PreTrainedModel) -> None:
    """Route this model object's ``generate`` (which nnsight and pyvene call too) through the fast path,
    and give its decode steps the fused kernels (patched before any steering library wraps the model)."""
    if hasattr(model, _HF_GENERATE):
        return
    fused.install_fused_kernels(model)
    hf_generate: Callable[..., Any] = getattr(model, "generate")  # noqa: B009 - nn.Module types it loosely
    setattr(model, _HF_GENERATE, hf_generate)
    setattr(model, "generate", functools.partial(fast_generate, model, hf_generate))  # noqa: B010


@contextmanager
def native_generate(model: PreTrainedModel) -> Iterator[None]:
    """Inside, ``model.generate`` is transformers' own again, for whoever calls it (the native cross-check:
    nnsight's and pyvene's generate call ``model.generate``)."""
    fast = model.__dict__.get("generate")
    if fast is None:
        yield
        return
    setattr(model, "generate", hf_generate(model))  # noqa: B010
    try:
        yield
    finally:
        setattr(model, "generate", fast)  # noqa: B010


def hf_generate(model: PreTrainedModel) -> Callable[..., Any]:
    """transformers' own ``generate`` of a model, whether or not the fast path is installed."""
    generate: Callable[..., Any] = getattr(model, _HF_GENERATE, None) or getattr(model, "generate")  # noqa: B009
    return generate
