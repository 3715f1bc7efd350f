"""An RMSNorm in one Triton kernel whose float32 sum of squares adds in ATen's order, bit for bit.

Why: in a decode step (a batch of rows, one token each) each RMSNorm costs three ATen kernels (the cast to
float32, the square, the mean) before its pointwise rest; the mean alone takes about 8 us on an H200, since
ATen reduces 16 rows per thread block and so runs 30 rows on two SMs. Across Gemma-2-9B's 169 norms that is
1.4 ms of a 12.3 ms step (``bench/profile_step.py``). Inductor's own reduction is fast but sums in another
order, so its roundings differ and the decode parts from transformers' ``generate`` (``fused.py``). This
kernel keeps ATen's order instead, so its result is ATen's, bit for bit.

The order, from ATen's ``Reduce.cuh`` (``setReduceConfig`` and ``input_vectorized_thread_reduce_impl``) for
a float32 mean over the contiguous last dimension of at least 16 rows: ``hidden`` is read as ``hidden / 4``
aligned vectors of 4; one warp reduces one row (block width 32, so the 16 rows of a block never mix); lane
``l`` takes vectors ``l, l + 32, l + 64, ...`` in turn and keeps four running sums, one per element of a
vector, starting from zero; it then adds them as ``((s0 + s1) + s2) + s3``; the 32 lanes are combined by a
shuffle-down tree with offsets 16, 8, 4, 2, 1 (lane i adds lane i + offset; ATen's CUDA order since it
matched Triton's); the mean is that sum times ``float(rows / numel)``, that is 1 / hidden rounded once.
Additions here are separate float32 operations (no fused multiply-add: the kernel is built with
``enable_fp_fusion=False``), and the square is a product rounded to float32 before it is added, as ATen's
separate ``pow`` kernel rounds it.

The pointwise rest is transformers' (and :mod:`.fused`'s ``_rms_scale`` / ``_unit_offset_scale``): float32
``x * rsqrt(mean + eps)`` with libdevice's ``rsqrt`` (what Inductor emits too), then either
``weight * h.to(dtype)`` (Llama, Qwen) or ``(h * (1 + weight)).to(dtype)`` (Gemma-2).

Where ATen would pick another configuration (fewer than 16 rows, a width not divisible by 4, under 128 or
over 8160, a strided or misaligned row), :func:`supports` says no and the caller keeps ATen's own kernels; and
before first use on a process's torch and GPU, :func:`agrees_with_aten` compares the kernel with ATen once.
``bench/exact_norm_check.py`` compares the kernel with ATen on the GPU, element for element; the tests check
the order against :func:`reference_mean_of_squares` (the same order written with torch operations) with
Triton's CPU interpreter.
"""

from __future__ import annotations

import numpy as np
import torch

from .events import log
from .triton_support import libdevice, on_current_cuda_device, tl, triton

LANES = 32
"""Threads of the warp that reduces one row (ATen's block width for these shapes)."""
VECTOR = 4
"""Elements per aligned load (16 bytes of float32)."""
_MIN_ROWS = 16
# ATen counts a row's inputs in elements when it decides to split a row across warps: at 256 or more per
# lane of 32 (hidden > 8160), each row is shared by 16 warps and summed in another order.
_MAX_HIDDEN = LANES * 255
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_PROBE_ROWS = 64

_AGREES: dict[tuple[int, torch.dtype, torch.device], bool] = {}
"""Per (hidden size, dtype, device): whether the kernel gave ATen's bits on this process's torch and GPU
(:func:`agrees_with_aten`). Like Triton's own cache of built kernels, it lives as long as the process."""


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ATen's mean over ``x``'s last dimension uses the configuration this kernel reproduces."""
    hidden = x.shape[-1]
    rows = x.numel() // hidden if hidden else 0
    return (
        triton is not None
        and libdevice is not None
        and on_current_cuda_device(x)
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and weight.shape == (hidden,)
        and weight.is_contiguous()
        and x.is_contiguous()
        and rows >= _MIN_ROWS
        and hidden % VECTOR == 0
        and VECTOR * LANES <= hidden <= _MAX_HIDDEN
        and x.data_ptr() % 16 == 0
    )


def checked(hidden: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`agrees_with_aten` has already compared the kernel with ATen for these."""
    return (hidden, dtype, device) in _AGREES


def agrees_with_aten(hidden: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernel equals ATen bit for bit here: checked once per (hidden, dtype, device) on random
    rows (a local generator: the run's random state is untouched) against ATen's mean and transformers'
    operations for both forms of the norm. ATen's order was read from one torch version; another version or
    GPU that sums otherwise is caught here, and the caller then keeps ATen's own kernels. Never checked during
    a CUDA graph capture (it would record the check): there it says no until checked outside one."""
    key = (hidden, dtype, device)
    if key in _AGREES:
        return _AGREES[key]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    from .fused import _mean_of_squares, _rms_scale, _unit_offset_scale  # transformers' operations

    generator = torch.Generator(device=device).manual_seed(hidden)
    x = (torch.randn(_PROBE_ROWS, 1, hidden, generator=generator, device=device) * 3).to(dtype)
    weight = (torch.randn(hidden, generator=generator, device=device) * 0.5).to(dtype)
    mean = _mean_of_squares(x)
    agrees = (
        torch.equal(mean_of_squares(x, weight), mean)
        and torch.equal(rms_norm(x, weight, 1e-6), _rms_scale(x, mean, weight, 1e-6))
        and torch.equal(rms_norm_unit_offset(x, weight, 1e-6), _unit_offset_scale(x, mean, weight, 1e-6))
    )
    _AGREES[key] = agrees
    if not agrees:
        log(f"exact norm kernel differs from ATen for hidden {hidden}, {dtype} (torch {torch.__version__}): "
            "ATen's own kernels are used instead")  # fmt: skip
    return agrees


def reference_mean_of_squares(x: torch.Tensor) -> torch.Tensor:
    """ATen's float32 mean of squares over the last dimension, in its CUDA kernel's order, with torch
    operations (one float32 rounding each): the specification the Triton kernel is tested against."""
    hidden = x.shape[-1]
    rows = x.reshape(-1, hidden).to(torch.float32)
    squares = rows * rows
    vectors = hidden // VECTOR
    iterations = -(-vectors // LANES)
    padded = torch.zeros(rows.shape[0], iterations * LANES * VECTOR, dtype=torch.float32, device=x.device)
    padded[:, :hidden] = squares
    # [row, iteration, lane, element]: lane l's k-th vector is vector l + 32 k.
    chunks = padded.view(rows.shape[0], iterations, LANES, VECTOR)
    sums = torch.zeros(rows.shape[0], LANES, VECTOR, dtype=torch.float32, device=x.device)
    for k in range(iterations):
        sums = sums + chunks[:, k]
    lane = ((sums[..., 0] + sums[..., 1]) + sums[..., 2]) + sums[..., 3]
    while lane.shape[-1] > 1:
        half = lane.shape[-1] // 2
        lane = lane[..., :half] + lane[..., half:]
    factor = torch.tensor(rows.shape[0], dtype=torch.float32) / torch.tensor(
        rows.numel(), dtype=torch.float32
    )
    return (lane * factor.to(x.device)).reshape(*x.shape[:-1], 1)


if triton is not None:
    # A Triton kernel: its arguments are pointers, scalars and tl.constexpr, which Triton reads from the
    # annotations, so it stays unannotated for mypy.
    @triton.jit  # type: ignore[untyped-decorator]
    def _rms_norm_rows(  # type: ignore[no-untyped-def]
        x_ptr, w_ptr, out_ptr, mean_ptr, eps, factor,
        HIDDEN: tl.constexpr, BLOCK: tl.constexpr, ITERATIONS: tl.constexpr, UNIT_OFFSET: tl.constexpr,
        STORE_MEAN: tl.constexpr, LIBDEVICE: tl.constexpr, LANES: tl.constexpr, VECTOR: tl.constexpr,
    ):  # fmt: skip
        tl.static_assert(LANES == 32 and VECTOR == 4)  # the combining steps below are written for these
        row = tl.program_id(0).to(tl.int64)
        base = x_ptr + row * HIDDEN
        lane = tl.arange(0, LANES)[:, None]
        element = tl.arange(0, VECTOR)[None, :]
        sums = tl.zeros([LANES, VECTOR], dtype=tl.float32)
        for k in tl.static_range(ITERATIONS):
            column = (lane + k * LANES) * VECTOR + element
            inside = column < HIDDEN
            value = tl.load(base + column, mask=inside, other=0.0).to(tl.float32)
            sums = sums + tl.where(inside, value * value, 0.0)
        # Each column alone (the other three are zeros), then added in ATen's order.
        s0 = tl.sum(tl.where(element == 0, sums, 0.0), axis=1)
        s1 = tl.sum(tl.where(element == 1, sums, 0.0), axis=1)
        s2 = tl.sum(tl.where(element == 2, sums, 0.0), axis=1)
        s3 = tl.sum(tl.where(element == 3, sums, 0.0), axis=1)
        lanes = ((s0 + s1) + s2) + s3
        # The shuffle-down tree, offsets 16, 8, 4, 2, 1: lane i adds lane i + offset (one addition each).
        lanes = tl.sum(tl.reshape(lanes, [2, 16]), axis=0)
        lanes = tl.sum(tl.reshape(lanes, [2, 8]), axis=0)
        lanes = tl.sum(tl.reshape(lanes, [2, 4]), axis=0)
        lanes = tl.sum(tl.reshape(lanes, [2, 2]), axis=0)
        mean = tl.sum(tl.reshape(lanes, [2, 1]), axis=0)
        if STORE_MEAN:
            tl.store(mean_ptr + row + tl.arange(0, 1), mean * factor)
        variance = mean * factor
        columns = tl.arange(0, BLOCK)
        inside_row = columns < HIDDEN
        x = tl.load(base + columns, mask=inside_row, other=0.0)
        weight = tl.load(w_ptr + columns, mask=inside_row, other=0.0)
        if LIBDEVICE:
            h = x.to(tl.float32) * libdevice.rsqrt(variance + eps)
        else:  # Triton's CPU interpreter (tests) has no libdevice
            h = x.to(tl.float32) * tl.rsqrt(variance + eps)
        if UNIT_OFFSET:
            y = h * (1.0 + weight.to(tl.float32))
        else:
            y = weight.to(tl.float32) * h.to(x.dtype).to(tl.float32)
        tl.store(out_ptr + row * HIDDEN + columns, y.to(x.dtype), mask=inside_row)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    unit_offset: bool,
    mean: torch.Tensor | None,
    interpreted: bool = False,
) -> torch.Tensor:
    """``interpreted``: run under Triton's CPU interpreter (tests), which has no libdevice ``rsqrt``."""
    hidden = x.shape[-1]
    rows = x.numel() // hidden
    out = torch.empty_like(x)
    factor = float(np.float32(rows) / np.float32(x.numel()))  # ATen's float(num_outputs) / numel
    _rms_norm_rows[(rows,)](
        x, weight, out, mean if mean is not None else out, float(eps), factor,
        HIDDEN=hidden, BLOCK=triton.next_power_of_2(hidden), ITERATIONS=-(-(hidden // VECTOR) // LANES),
        UNIT_OFFSET=unit_offset, STORE_MEAN=mean is not None, LIBDEVICE=not interpreted, LANES=LANES,
        VECTOR=VECTOR, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama / Qwen2 RMSNorm (``weight * h.to(dtype)``); call only where :func:`supports` holds."""
    return _launch(x, weight, eps, unit_offset=False, mean=None)


def rms_norm_unit_offset(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma-2 RMSNorm (``(h * (1 + weight)).to(dtype)``); call only where :func:`supports` holds."""
    return _launch(x, weight, eps, unit_offset=True, mean=None)


def mean_of_squares(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The kernel's float32 mean of squares alone, ``[..., 1]`` (for the exactness checks)."""
    mean = torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    _launch(x, weight, 1e-6, unit_offset=False, mean=mean)
    return mean
