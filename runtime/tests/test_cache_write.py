"""The decode step's cache write kernel: the same bytes as transformers' update, where it applies, and what
happens where it does not. The kernel itself runs here under Triton's CPU interpreter (no GPU in CI); on the
GPU, whole decodes are compared by ``bench/fusion_exactness.py`` and the protocol's native cross-check."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from _interpreted import run_interpreted
from phasegate_runtime import cache_write, exact_norm, fused, triton_support

_INTERPRETED = """
import functools
import torch
from transformers.cache_utils import StaticLayer
from phasegate_runtime import cache_write, fused
from phasegate_runtime.decode import _StaticLayer

# The interpreter runs on the CPU: let supports() accept CPU tensors, as it does CUDA ones.
cache_write.supports = functools.partial(cache_write.supports, interpreted=True)
launches = []
write = cache_write.write
cache_write.write = lambda *args: launches.append(1) or write(*args)
torch.manual_seed(0)
for batch, heads, dim, dtype, transposed in ((3, 2, 128, torch.bfloat16, True),
                                             (2, 4, 96, torch.float32, False)):
    ours, theirs = _StaticLayer(max_cache_len=9), StaticLayer(max_cache_len=9)
    prompt = torch.randn(batch, heads, 4, dim).to(dtype), torch.randn(batch, heads, 4, dim).to(dtype)
    ours.update(*prompt)
    theirs.update(*prompt)
    for step in range(5):
        if transposed:  # as attention hands them over: [batch, 1, heads, dim] seen as [batch, heads, 1, dim]
            k = torch.randn(batch, 1, heads, dim).to(dtype).transpose(1, 2)
            v = torch.randn(batch, heads, 1, 2 * dim).to(dtype)[..., :dim]  # other strides than k's
        else:
            k, v = (torch.randn(batch, heads, 1, dim).to(dtype) for _ in range(2))
        with fused.decode_steps("exact"):
            got = ours.update(k, v)
        want = theirs.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (dim, step)
        assert int(ours.cumulative_length) == int(theirs.cumulative_length) == 5 + step
assert not fused.FAILURES, fused.FAILURES
assert len(launches) == 10, launches  # the kernel wrote every step of both cases (not transformers' update)
# Outside the cache nothing is written (the decoder never asks), at either end: the caches are the middle of
# larger zeroed buffers, so a write past either end would land in the buffer around them.
memory = torch.zeros(2, 3, 2, 2, 3, 8)
keys, values = memory[0, 1], memory[1, 1]
for outside in (3, -1):
    cache_write.write(keys, values, torch.ones(2, 2, 1, 8), torch.ones(2, 2, 1, 8), torch.tensor(outside))
assert not memory.any()
print("ok")
"""


def test_the_kernel_writes_what_transformers_update_writes_under_tritons_interpreter() -> None:
    run_interpreted(_INTERPRETED)


def _write_args(**change: Any) -> dict[str, torch.Tensor]:
    args = {
        "keys": torch.zeros(2, 4, 16, 128, dtype=torch.bfloat16),
        "values": torch.zeros(2, 4, 16, 128, dtype=torch.bfloat16),
        "key_states": torch.zeros(2, 1, 4, 128, dtype=torch.bfloat16).transpose(1, 2),
        "value_states": torch.zeros(2, 4, 1, 128, dtype=torch.bfloat16),
        "position": torch.tensor(3),
    }
    return args | change


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"keys": torch.zeros(2, 16, 4, 128, dtype=torch.bfloat16).transpose(1, 2)}, "a strided cache"),
        ({"key_states": torch.zeros(2, 4, 1, 256, dtype=torch.bfloat16)[..., ::2]}, "strided rows"),
        ({"value_states": torch.zeros(2, 4, 2, 128, dtype=torch.bfloat16)}, "two positions"),
        ({"value_states": torch.zeros(2, 4, 1, 128)}, "another dtype"),
        ({"position": torch.tensor([3], dtype=torch.int32)}, "an int32 position"),
        ({"position": torch.tensor([3, 4])}, "two positions to write at"),
        ({"value_states": torch.zeros(2, 4, 1, 64, dtype=torch.bfloat16)}, "values of another width"),
        (
            {
                "keys": torch.zeros(1, 1, 4, 2048, dtype=torch.bfloat16),
                "values": torch.zeros(1, 1, 4, 2048, dtype=torch.bfloat16),
                "key_states": torch.zeros(1, 1, 1, 2048, dtype=torch.bfloat16),
                "value_states": torch.zeros(1, 1, 1, 2048, dtype=torch.bfloat16),
            },
            "heads wider than 1024",
        ),
    ],
)
def test_it_declines_other_layouts(change: dict[str, torch.Tensor], why: str) -> None:
    assert cache_write.supports(**_write_args(), interpreted=True)
    assert not cache_write.supports(**_write_args(**change), interpreted=True), why


def test_on_the_cpu_it_never_applies_and_the_update_is_transformers() -> None:
    assert not cache_write.supports(**_write_args())
    with fused.decode_steps("exact"):
        assert not fused.cache_write(*_write_args().values())


def test_outside_decode_steps_and_with_fusion_off_it_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_write, "supports", lambda *_a: True)
    monkeypatch.setattr(cache_write, "write", lambda *_a: pytest.fail("the kernel ran"))
    args = _write_args()
    assert not fused.cache_write(*args.values())  # no decode step open
    with fused.decode_steps("off"):
        assert not fused.cache_write(*args.values())
    assert int(args["position"]) == 3


def test_a_kernel_that_cannot_build_turns_fusion_off_and_the_write_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fused, "FAILURES", [])
    monkeypatch.setattr(cache_write, "supports", lambda *_a: True)

    def no_compiler(*_args: Any) -> None:
        raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(cache_write, "write", no_compiler)
    args = _write_args()
    with fused.decode_steps("exact"):
        assert not fused.cache_write(*args.values())
    assert int(args["position"]) == 3  # not advanced: transformers' update writes and advances it
    assert len(fused.FAILURES) == 1
    assert "cache_write" in fused.FAILURES[0]


class _OnDevice:
    """Stands for a tensor on ``cuda:index`` (no GPU here)."""

    def __init__(self, index: int) -> None:
        self.is_cuda = True
        self.device = torch.device("cuda", index)


def test_kernels_launch_only_on_the_current_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton launches on the current device: a tensor on another means a fault, or another GPU's memory."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert triton_support.on_current_cuda_device(_OnDevice(0))  # type: ignore[arg-type]
    assert not triton_support.on_current_cuda_device(_OnDevice(1))  # type: ignore[arg-type]
    assert not triton_support.on_current_cuda_device(torch.zeros(1))
    # Both kernels ask it (the interpreter's CPU tensors aside).
    monkeypatch.setattr(cache_write, "on_current_cuda_device", lambda _t: False)
    assert not cache_write.supports(**_write_args())
    monkeypatch.setattr(exact_norm, "on_current_cuda_device", lambda _t: False)
    assert not exact_norm.supports(torch.zeros(30, 1, 3584), torch.zeros(3584))
    monkeypatch.setattr(exact_norm, "on_current_cuda_device", lambda _t: True)
    assert exact_norm.supports(torch.zeros(30, 1, 3584), torch.zeros(3584))
