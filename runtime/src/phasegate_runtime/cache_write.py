"""The static KV cache's write in a decode step as one Triton kernel: a copy, so exact by construction.

transformers' ``StaticLayer.update`` writes one step's keys and values with five kernels per layer: an
``arange`` and an addition for the index, two ``index_copy_`` calls and the advance of the layer's position.
On an H200 they were about 0.23 ms of a 6.3 ms Qwen2.5-7B-shaped decode step, 140 of its 900 kernels
(``bench/profile_step.py``: the ``index_copy`` kernel alone takes 2.7 us to copy 30 x 4 rows of 128 values).
Here one kernel stores both rows of every (batch, head) at the position the layer holds on the device, and
one ATen addition then advances it (:func:`.fused.cache_write`). Nothing is computed, only bytes moved, so
the cache holds what ``index_copy_`` would have put there, bit for bit; the tests compare the two under
Triton's CPU interpreter, and ``bench/fusion_exactness.py`` and the protocol's native cross-check compare
whole decodes on the GPU.

Where the layout is another (a strided cache, rows whose last dimension is strided, other dtypes, more than
one position), :func:`supports` says no and transformers' own update runs.
"""

from __future__ import annotations

import torch

from .triton_support import on_current_cuda_device, tl, triton

_MAX_HEAD_DIM = 1024


def supports(
    keys: torch.Tensor,
    values: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
    position: torch.Tensor,
    interpreted: bool = False,
) -> bool:
    """Whether the kernel takes this write: a contiguous ``[batch, heads, length, dim]`` cache pair, one new
    position of rows whose last dimension is contiguous, one dtype, and a one-element integer position on the
    same device (the current CUDA device, where Triton launches; or the CPU under Triton's interpreter)."""
    if triton is None or keys.dim() != 4:
        return False
    batch, heads, _, dim = keys.shape
    rows = (batch, heads, 1, dim)
    devices = {t.device for t in (keys, values, key_states, value_states, position)}
    return (
        (interpreted or on_current_cuda_device(keys))
        and len(devices) == 1
        and values.shape == keys.shape
        and keys.is_contiguous()
        and values.is_contiguous()
        and tuple(key_states.shape) == rows
        and tuple(value_states.shape) == rows
        and key_states.stride(-1) == 1
        and value_states.stride(-1) == 1
        and len({keys.dtype, values.dtype, key_states.dtype, value_states.dtype}) == 1
        and position.numel() == 1
        and position.dtype == torch.long
        and 0 < dim <= _MAX_HEAD_DIM
    )


if triton is not None:
    # A Triton kernel: its arguments are pointers, scalars and tl.constexpr, which Triton reads from the
    # annotations, so it stays unannotated for mypy.
    @triton.jit  # type: ignore[untyped-decorator]
    def _write_rows(  # type: ignore[no-untyped-def]
        keys_ptr, values_ptr, k_ptr, v_ptr, position_ptr,
        heads, length, k_batch, k_head, v_batch, v_head,
        DIM: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        batch = row // heads
        head = row % heads
        position = tl.load(position_ptr)
        columns = tl.arange(0, BLOCK)
        # Never outside the cache (the decoder's steps stay inside it, so this mask never drops a row).
        inside = columns < tl.where((position >= 0) & (position < length), DIM, 0)
        at = (row * length + position) * DIM + columns
        k = tl.load(k_ptr + batch * k_batch + head * k_head + columns, mask=inside)
        v = tl.load(v_ptr + batch * v_batch + head * v_head + columns, mask=inside)
        tl.store(keys_ptr + at, k, mask=inside)
        tl.store(values_ptr + at, v, mask=inside)


def write(
    keys: torch.Tensor,
    values: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
    position: torch.Tensor,
) -> None:
    """``keys[:, :, position] = key_states`` and the same for values; call only where :func:`supports`
    holds. The position is read on the device (no host synchronisation; a CUDA graph replays it)."""
    batch, heads, length, dim = keys.shape
    _write_rows[(batch * heads,)](
        keys, values, key_states, value_states, position,
        heads, length, key_states.stride(0), key_states.stride(1), value_states.stride(0),
        value_states.stride(1), DIM=dim, BLOCK=triton.next_power_of_2(dim), num_warps=1,
    )  # fmt: skip
