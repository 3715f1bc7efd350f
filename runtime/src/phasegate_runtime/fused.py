"""Fused decode-step kernels: ``torch.compile`` of a few small pure functions, used only inside decode steps.

Once the CUDA graph (:mod:`.decode`) removed the launch overhead, a Gemma-2-9B-shaped decode step on an H200
still took 13.0 ms against a 3.9 ms weight read: about 1,700 small kernels a step, mostly the RMSNorms (four
per layer, about ten kernels each), soft-capped attention, rotary embeddings and the gated activation. The
functions below do the same operations as transformers for those pieces; compiled, each becomes one or two
Triton kernels, and the step took 8.1 ms (``bench/fusion_probe.py``); a whole generation pass went from
1.99 to 1.33 s (Gemma-2-9B shape) and from 1.14 to 0.89 s (Qwen2.5-7B shape) on the H200 (``BENCHMARKS.md``).

Why small functions rather than ``torch.compile`` of the model or of its decoder layers: every steering
library acts at a decoder layer's output from outside the layer's own forward (forward hooks; nnsight's
controller wrapped around ``forward``; pyvene's hooks). These pieces sit strictly inside a layer, so nothing
a library does can be baked into a compiled graph, and one compiled kernel serves every layer. Compiling the
layers' forwards instead (the probe's ``regional``) was no faster (8.0 ms a step) and took 36 s to compile,
against 5 s.

Only decode steps use them (:func:`decode_steps`, entered by the decoder), so the prompt pass and the
direction's forward passes run transformers' own code, and the compiled shapes stay few (batch x cache
length). Outside a decode step every patched forward calls the original. The spec's
``numerics.fused_kernels`` chooses: ``off``; ``exact`` (CUDA only: the pieces that are bit-exact, below);
``auto`` (every piece, CUDA only); ``on`` (every piece, CPU too; tests use a compile backend that needs no C++
toolchain, see :data:`COMPILE_BACKEND`).

Numerics: run eagerly, each function equals the module it replaces bit for bit (tests). Compiled, Inductor
may keep an intermediate in float32 where eager rounds it to bf16, so on a bf16 GPU model fused and unfused
decoding can pick different tokens. Method parity is unaffected: the baseline and every method decode with
the same kernels. The switch below is process-wide state: decoding is single-threaded (nnsight's workers are
greenlets on the decoding thread).

Exact pieces (``exact``): measured on an H200 (``bench/fusion_exactness.py``), the pointwise pieces (gated
MLPs, rotary) compile bit-exact, while the norms' float32 mean and Gemma's soft-capped attention do not:
Inductor sums in another order than ATen. So in ``exact`` mode each norm keeps ATen's sum of squares: as
one hand-written Triton kernel that adds in ATen's order, bit for bit (:mod:`.exact_norm`, where ATen's
configuration is the one it reproduces: 16 rows or more, as every decode step of a batch of 16 or more), or
else split where the two part ways, the mean by ATen's own kernels and only the pointwise rest compiled.
Attention stays eager. The static cache's write of each step's keys and values is one Triton kernel too
(:func:`cache_write`, a copy). The site observer's per-step check (:func:`site_error`) is compiled too: a
maximum of absolute differences is the same whatever the order. A Qwen2.5-7B-shaped pass took 0.94 s against
1.12 s unfused with the split norms, and decoded the same tokens as transformers' ``generate`` on all 30
prompts.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import cache_write as kv_cache
from . import exact_norm, triton_support
from .events import log

COMPILE_BACKEND: str | Callable[..., Any] = "inductor"
"""What ``torch.compile`` builds with; tests set ``"eager"`` (same tracing, no Triton or C++ build)."""

COMPILE_SECONDS: list[float] = [0.0]
"""Wall seconds spent in calls that compiled (one-time, per process and shape); read by the runner."""

FAILURES: list[str] = []
"""Why compiling failed, if it did (e.g. no C compiler for Triton's launcher); then every piece runs
uncompiled for the rest of the process, the same operations with more kernels."""

# Compiled-graph variants per function (shapes x modes) before dynamo gives up; its default, 8, is reached
# by a process that decodes several batch sizes in both deterministic modes.
_RECOMPILE_LIMIT = 64
# Errors that mean "this function cannot be compiled here"; anything else is a real error and propagates.
_COMPILE_ERRORS: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.BackendCompilerFailed,
    torch._dynamo.exc.Unsupported,
    torch._dynamo.exc.InternalTorchDynamoError,
    torch._dynamo.exc.FailOnRecompileLimitHit,
)

FusedMode = Literal["off", "exact", "all"]
"""What a decode step fuses: nothing, the bit-exact pieces, or every piece."""

_state: dict[str, FusedMode] = {"mode": "off"}
_compiled: dict[Callable[..., Any], Callable[..., Any]] = {}
_PATCHED = "_phasegate_fused"


def fused_mode(setting: str, device: torch.device) -> FusedMode:
    """The spec's ``numerics.fused_kernels``: ``off``: nothing; ``exact``: the exact pieces on CUDA; ``auto``:
    every piece on CUDA; ``on``: every piece (CPU too). ``off`` for the rest of the process once compiling
    failed (:data:`FAILURES`)."""
    if FAILURES or (setting in ("exact", "auto") and device.type != "cuda"):
        return "off"
    modes: dict[str, FusedMode] = {"exact": "exact", "auto": "all", "on": "all"}
    return modes.get(setting, "off")


@contextmanager
def decode_steps(mode: FusedMode) -> Iterator[None]:
    """While open, the patched pieces of ``mode`` run their compiled versions."""
    previous = _state["mode"]
    _state["mode"] = mode
    try:
        yield
    finally:
        _state["mode"] = previous


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    compiled = torch.compile(fn, fullgraph=True, backend=COMPILE_BACKEND)
    _compiled[fn] = compiled
    return compiled


def _run_compiled(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import torch._inductor.config as inductor_config

    # Inductor's deterministic mode skips on-device benchmarking where timing would pick kernels (and so
    # rounding); each compile follows the mode of the call that triggers it. ``emulate_precision_casts``
    # keeps every rounding to bf16 that eager performs between fused operations (Inductor would otherwise
    # keep float32 intermediates): without it, a Qwen2.5-7B-shaped bf16 decode parted from transformers'
    # ``generate`` on all 30 eval prompts (``bench/native_drift.py``), and the native cross-check failed.
    deterministic = torch.are_deterministic_algorithms_enabled()
    with (
        torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT),
        inductor_config.patch(deterministic=deterministic, emulate_precision_casts=True),
    ):
        return (_compiled.get(fn) or _compile(fn))(*args, **kwargs)


def _give_up(name: str, err: BaseException) -> None:
    """A piece could not be built here: fused kernels off for the rest of the process, with the reason in
    :data:`FAILURES`. Re-raises inside a CUDA graph capture (the decoder warms up and captures again) and for
    errors of the device itself (out of memory, a CUDA fault), which are not a missing compiler."""
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if capturing or isinstance(err, torch.OutOfMemoryError | torch.AcceleratorError):
        raise err
    FAILURES.append(f"{name}: {type(err).__name__}: {err}")
    log(f"fused kernels off for this process, building {name} failed: {FAILURES[-1]}")


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def kernel(*, exact: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``fn`` itself outside decode steps; inside, its compiled version (compiled on first use), in ``all``
    mode, and in ``exact`` mode too if it is one of the exact pieces."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _kernel(fn, exact)

    return wrap


def _kernel(fn: Callable[..., Any], exact: bool) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        mode = _state["mode"]
        # Inside another compiled piece (``all`` compiles grouped attention whole) it is traced as its part.
        if mode == "off" or (mode == "exact" and not exact) or FAILURES or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        before, started = _graphs_compiled(), time.perf_counter()
        try:
            out = _run_compiled(fn, *args, **kwargs)
        except _COMPILE_ERRORS as err:
            _give_up(fn.__name__, err)
            return fn(*args, **kwargs)
        if _graphs_compiled() != before:
            COMPILE_SECONDS[0] += time.perf_counter() - started
        return out

    return call


# The pure functions: transformers' operations, op for op (tests compare them bit for bit in eager mode).


# Each RMSNorm in two parts, written once: its float32 mean of squares, and the pointwise rest (epsilon,
# rsqrt, scale, casts). Compiled whole (``all``), the mean is Inductor's; split (``exact``), it is ATen's.


def _mean_of_squares(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).pow(2).mean(-1, keepdim=True)


def _rms_scale(x: torch.Tensor, variance: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama / Qwen2 / Qwen3: normalise in float32, cast back, then scale."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(x.dtype)


def _unit_offset_scale(
    x: torch.Tensor, variance: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """Gemma-2: normalise and scale by ``1 + weight`` in float32, then cast back."""
    h = x.float()
    h = h * torch.rsqrt(variance + eps)
    return (h * (1.0 + weight.float())).type_as(x)


@kernel(exact=False)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_scale(x, _mean_of_squares(x), weight, eps)


@kernel(exact=False)
def rms_norm_unit_offset(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _unit_offset_scale(x, _mean_of_squares(x), weight, eps)


rms_norm_tail = kernel(exact=True)(_rms_scale)
rms_norm_unit_offset_tail = kernel(exact=True)(_unit_offset_scale)


def _exact_kernel(
    kernel_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
) -> torch.Tensor | None:
    """``kernel_fn`` (:mod:`.exact_norm`) where it reproduces ATen's sum for this input (its configuration,
    and a first comparison with ATen on this torch and GPU), else None. A kernel that fails to build turns the
    fused kernels off for the process, as a failed compile does."""
    if FAILURES or not exact_norm.supports(x, weight):
        return None
    try:
        started = time.perf_counter()
        checked = exact_norm.checked(x.shape[-1], x.dtype, x.device)
        if not exact_norm.agrees_with_aten(x.shape[-1], x.dtype, x.device):
            return None
        if not checked:  # building the kernel and the first comparison: one-time, like a compile
            COMPILE_SECONDS[0] += time.perf_counter() - started
        return kernel_fn(x, weight, eps)
    except triton_support.BUILD_ERRORS as err:
        _give_up(kernel_fn.__name__, err)
        return None


def rms_norm_split(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rms_norm` with ATen's sum of squares: one Triton kernel that sums in ATen's order where it can
    (:mod:`.exact_norm`), else the mean by ATen itself (the same operations as transformers), the rest
    compiled."""
    fused_norm = _exact_kernel(exact_norm.rms_norm, x, weight, eps)
    if fused_norm is not None:
        return fused_norm
    return rms_norm_tail(x, _mean_of_squares(x), weight, eps)  # type: ignore[no-any-return]


def rms_norm_unit_offset_split(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rms_norm_unit_offset` with ATen's sum of squares, as :func:`rms_norm_split`."""
    fused_norm = _exact_kernel(exact_norm.rms_norm_unit_offset, x, weight, eps)
    if fused_norm is not None:
        return fused_norm
    return rms_norm_unit_offset_tail(x, _mean_of_squares(x), weight, eps)  # type: ignore[no-any-return]


def cache_write(
    keys: torch.Tensor,
    values: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
    position: torch.Tensor,
) -> bool:
    """Inside decode steps (any fused mode but ``off``): one step's keys and values written into a static
    cache layer at ``position`` by one Triton kernel (:mod:`.cache_write`, a copy: exact), then ``position``
    advanced by one, as transformers' ``StaticLayer.update`` does. False where it wrote nothing (outside
    decode steps, fused kernels off, a layout the kernel does not take): the caller's own update runs."""
    if _state["mode"] == "off" or FAILURES:
        return False
    if not kv_cache.supports(keys, values, key_states, value_states, position):
        return False
    try:
        kv_cache.write(keys, values, key_states, value_states, position)
    except triton_support.BUILD_ERRORS as err:
        _give_up("cache_write", err)
        return False
    position.add_(1)
    return True


@kernel(exact=True)
def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@kernel(exact=True)
def gelu_tanh_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


@kernel(exact=True)
def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


@kernel(exact=True)
def attention_scores(
    weights: torch.Tensor, mask: torch.Tensor | None, scaling: float, softcap: float | None
) -> torch.Tensor:
    """Eager attention's pointwise steps between its two matrix products: scale, soft-cap, mask (each
    rounded to the model dtype, as eagerly). Compiled alone in ``exact`` mode; the softmax stays ATen's.
    Measured bit-exact with ``scaling`` and ``softcap`` as the compiled constants of the one model a run
    decodes; a process compiling it for several values (dynamo may then pass them as inputs) is unmeasured."""
    weights = weights * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if mask is not None:
        weights = weights + mask
    return weights


@kernel(exact=False)
def grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (soft-capping included) without ``repeat_kv``; see
    :func:`.decode.grouped_eager_attention`. Returns the output ``[batch, q_len, heads, dim]`` and weights."""
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # Head h = kv * groups + g, as repeat_kv lays them out.
    folded = query.reshape(batch, kv_heads, groups * q_len, dim)
    weights = torch.matmul(folded, key.transpose(2, 3)).view(batch, heads, q_len, -1)
    weights = attention_scores(weights, mask, scaling, softcap)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights.view(batch, kv_heads, groups * q_len, -1), value)
    return out.view(batch, heads, q_len, dim).transpose(1, 2).contiguous(), weights


@kernel(exact=True)
def site_error(
    received: torch.Tensor, raw: torch.Tensor, delta: torch.Tensor, running_max: torch.Tensor
) -> None:
    """The site observer's check of one hand-off (:mod:`.site_check`): ``running_max`` (one float32 element)
    becomes the larger of itself and ``max |received - (raw + delta)|`` in float32 (``raw + delta`` rounded to
    the model dtype first, as every method adds it). Exact when compiled: a maximum does not depend on the
    order. Which maximum it updates is the caller's tensor, not an argument the compiled kernel would be
    specialised on: one kernel serves every hand-off (an index argument had cost a second compilation)."""
    expected = raw + delta
    err = (received.float() - expected.float()).abs().amax()
    running_max.copy_(torch.maximum(running_max, err))


# Which transformers classes each function reproduces. Only architectures whose tiny models the tests
# compare bit for bit are listed; any other model decodes with its own code (still through the CUDA graph).
# Norms: (the whole norm compiled, the split one for ``exact`` mode, the module's epsilon attribute).
_NORMS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], str]] = {
    "Qwen2RMSNorm": (rms_norm, rms_norm_split, "variance_epsilon"),
    "Qwen3RMSNorm": (rms_norm, rms_norm_split, "variance_epsilon"),
    "LlamaRMSNorm": (rms_norm, rms_norm_split, "variance_epsilon"),
    "Gemma2RMSNorm": (rms_norm_unit_offset, rms_norm_unit_offset_split, "eps"),
}
_MLPS: tuple[str, ...] = ("Qwen2MLP", "Qwen3MLP", "LlamaMLP", "Gemma2MLP")
_ROTARY_MODEL_TYPES: tuple[str, ...] = ("qwen2", "qwen3", "llama", "gemma2")


def _gate_function(act: nn.Module) -> Callable[..., torch.Tensor] | None:
    from transformers.activations import GELUTanh, SiLUActivation

    if isinstance(act, SiLUActivation | nn.SiLU):
        return silu_gate
    if isinstance(act, GELUTanh) and isinstance(getattr(act, "act", None), functools.partial):
        return gelu_tanh_gate  # GELUTanh's default: F.gelu(approximate="tanh"), not its Python formula
    return None


def _patch_norm(
    module: nn.Module, whole: Callable[..., torch.Tensor], split: Callable[..., torch.Tensor], eps_attr: str
) -> None:
    original = module.forward
    eps = float(getattr(module, eps_attr))

    def forward(x: torch.Tensor) -> torch.Tensor:
        # detach(): compiled kernels are specialised on requires_grad, which pyvene switches off on every
        # parameter of a model it wraps; a detached weight looks the same to them before and after.
        weight = cast(torch.Tensor, module.weight)
        mode = _state["mode"]
        if mode == "off":
            return cast(torch.Tensor, original(x))
        return (split if mode == "exact" else whole)(x, weight.detach(), eps)

    module.forward = forward


def _patch_mlp(module: nn.Module, gate_fn: Callable[..., torch.Tensor]) -> None:
    original = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        act = cast(nn.Module, module.act_fn)
        # The fused path never calls act_fn, so anything hooked on it gets the original forward.
        if _state["mode"] == "off" or act._forward_hooks or act._forward_pre_hooks:
            return cast(torch.Tensor, original(x))
        gate, up, down = (cast(nn.Module, getattr(module, n)) for n in ("gate_proj", "up_proj", "down_proj"))
        return cast(torch.Tensor, down(gate_fn(gate(x), up(x))))

    module.forward = forward


def _patch_rotary(model_type: str) -> None:
    """transformers' attention looks ``apply_rotary_pos_emb`` up in its modeling module at call time; the
    module's function is swapped (process-wide, once) for one that calls it unchanged outside decode steps."""
    modeling = sys.modules.get(f"transformers.models.{model_type}.modeling_{model_type}")
    original = getattr(modeling, "apply_rotary_pos_emb", None)
    if modeling is None or original is None or getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def apply_rotary_pos_emb(*args: Any, **kwargs: Any) -> Any:
        return rotary(*args, **kwargs) if _state["mode"] != "off" else original(*args, **kwargs)

    setattr(apply_rotary_pos_emb, _PATCHED, True)
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb  # type: ignore[attr-defined]


def install_fused_kernels(model: nn.Module) -> None:
    """Give this model's norms, gated MLPs and rotary embedding their fused decode-step versions.

    Patches instance ``forward``s, before any steering library wraps the model (nnsight keeps an instance
    forward as the body it calls). Idempotent.
    """
    if getattr(model, _PATCHED, False):
        return
    for module in model.modules():
        name = type(module).__name__
        if name in _NORMS:
            _patch_norm(module, *_NORMS[name])
        elif name in _MLPS and (gate_fn := _gate_function(cast(nn.Module, module.act_fn))) is not None:
            _patch_mlp(module, gate_fn)
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type in _ROTARY_MODEL_TYPES:
        _patch_rotary(model_type)
    setattr(model, _PATCHED, True)
