"""The exact RMSNorm kernel: the order it sums in, where it applies, and what happens when it cannot build.

The kernel's claim is "ATen's sum, bit for bit". That is checked in two halves. On the GPU,
``bench/exact_norm_check.py`` compares it with ATen itself (no GPU in CI). Here, Triton's CPU interpreter runs
the very kernel against :func:`exact_norm.reference_mean_of_squares`, ATen's CUDA order written as torch
operations, so a change to the kernel's order fails CI; and that reference is shown to differ from a plain
sum, so the comparison can fail.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from _interpreted import run_interpreted
from phasegate_runtime import exact_norm, fused

_INTERPRETED = """
import torch
from phasegate_runtime import exact_norm, fused

torch.manual_seed(0)
# 1000: a last pass over the row that only some lanes fill.
for rows, hidden, dtype, scale in ((16, 1000, torch.bfloat16, 30.0), (30, 3584, torch.float32, 0.1)):
    x = (torch.randn(rows, 1, hidden) * scale).to(dtype)
    w = torch.randn(hidden).to(dtype)
    reference = exact_norm.reference_mean_of_squares(x)
    mean = torch.empty(rows, 1, 1)
    exact_norm._launch(x, w, 1e-6, unit_offset=False, mean=mean, interpreted=True)
    assert torch.equal(mean, reference), (rows, hidden, (mean - reference).abs().max())
    # The pointwise rest on the interpreter's rsqrt (numpy's; the GPU build uses libdevice's, like Inductor).
    for unit_offset, tail in ((False, fused._rms_scale), (True, fused._unit_offset_scale)):
        out = exact_norm._launch(x, w, 1e-6, unit_offset=unit_offset, mean=None, interpreted=True)
        torch.testing.assert_close(out, tail(x, reference, w, 1e-6), rtol=2e-2, atol=1e-3)
print("ok")
"""


def test_the_kernel_sums_in_the_reference_order_under_tritons_interpreter() -> None:
    run_interpreted(_INTERPRETED)


def test_the_reference_order_is_not_a_plain_sum() -> None:
    """Otherwise the interpreter test above could not tell a wrong order from the right one."""
    torch.manual_seed(2)
    x = torch.randn(64, 1, 3584) * 10
    reference = exact_norm.reference_mean_of_squares(x)
    sequential = torch.zeros(64, 1, 1)
    squares = x * x
    for i in range(0, 3584, 512):  # another order: blocks of 512 summed one after the other
        sequential = sequential + squares[..., i : i + 512].sum(-1, keepdim=True)
    sequential = sequential * (1 / 3584)
    assert not torch.equal(reference, sequential)
    torch.testing.assert_close(reference, sequential)  # the same value up to rounding


def _cuda_like(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors pass for the current CUDA device (only the layout rules are under test)."""
    monkeypatch.setattr(exact_norm, "on_current_cuda_device", lambda t: t.device.type in ("cpu", "cuda"))


@pytest.mark.parametrize(
    ("shape", "why"),
    [((15, 1, 3584), "fewer than 16 rows"), ((30, 1, 3586), "width not a multiple of 4"),
     ((30, 1, 64), "width under 128"), ((30, 1, 8192), "a lane would sum 256 values: ATen splits rows")],
)  # fmt: skip
def test_it_declines_where_aten_uses_another_configuration(
    shape: tuple[int, ...], why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.zeros(shape, dtype=torch.bfloat16)
    weight = torch.zeros(shape[-1], dtype=torch.bfloat16)
    _cuda_like(monkeypatch)
    assert not exact_norm.supports(x, weight), why
    good = torch.zeros(30, 1, 3584, dtype=torch.bfloat16)
    assert exact_norm.supports(good, torch.zeros(3584, dtype=torch.bfloat16))
    widest = torch.zeros(16, 1, 8160, dtype=torch.bfloat16)
    assert exact_norm.supports(widest, torch.zeros(8160, dtype=torch.bfloat16))
    assert not exact_norm.supports(good, torch.zeros(3584, dtype=torch.float32)), "weight dtype"
    strided = torch.zeros(30, 1, 7168, dtype=torch.bfloat16)[..., ::2]
    assert not exact_norm.supports(strided, torch.zeros(3584, dtype=torch.bfloat16)), "strided"


def test_on_the_cpu_it_never_applies() -> None:
    assert not exact_norm.supports(torch.zeros(30, 1, 3584), torch.zeros(3584))


def _aten_launch(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool, mean: Any) -> Any:
    """What the kernel computes, by ATen on the CPU (the kernel itself cannot run here)."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    if mean is not None:
        mean.copy_(variance)
    tail = fused._unit_offset_scale if unit_offset else fused._rms_scale
    return tail(x, variance, weight, eps)


@pytest.mark.parametrize("off_by", [0.0, 1e-3])
def test_the_kernel_is_compared_with_aten_once_before_it_is_used(
    off_by: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another torch or GPU might sum otherwise: the first use compares the kernel with ATen, and a kernel
    that differs in any bit is not used (the split norm, ATen's own mean, runs instead)."""
    monkeypatch.setattr(fused, "FAILURES", [])
    monkeypatch.setattr(exact_norm, "_AGREES", {})
    monkeypatch.setattr(exact_norm, "supports", lambda *_a: True)
    calls: list[int] = []

    def launch(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool, mean: Any) -> Any:
        calls.append(x.shape[0])
        out = _aten_launch(x, weight, eps, unit_offset, mean)
        return out * (1 + off_by) if x.shape[0] == 64 else out  # the probe's rows (64) differ, or not

    monkeypatch.setattr(exact_norm, "_launch", launch)
    x, weight = torch.randn(30, 1, 256), torch.randn(256)
    expected = fused._rms_scale(x, fused._mean_of_squares(x), weight, 1e-6)
    for _ in range(2):
        assert torch.equal(fused.rms_norm_split(x, weight, 1e-6), expected)
    agrees = off_by == 0.0
    assert {(256, torch.float32, torch.device("cpu")): agrees} == exact_norm._AGREES
    # The probe once (the mean, then each form, stopping at the first difference: here the Qwen form's
    # output); then the kernel at each call only where it agreed.
    assert calls == ([64, 64, 64, 30, 30] if agrees else [64, 64])
    assert fused.FAILURES == []


def test_a_kernel_that_cannot_build_turns_fusion_off_and_the_norm_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a failed compile does (``test_fused``): the split norm runs instead, and the run says why."""
    monkeypatch.setattr(fused, "FAILURES", [])
    monkeypatch.setattr(exact_norm, "_AGREES", {})
    monkeypatch.setattr(exact_norm, "supports", lambda *_a: True)

    def no_compiler(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(exact_norm, "_launch", no_compiler)
    x, weight = torch.randn(30, 1, 256), torch.randn(256)
    expected = fused._rms_scale(x, fused._mean_of_squares(x), weight, 1e-6)
    assert torch.equal(fused.rms_norm_split(x, weight, 1e-6), expected)
    assert len(fused.FAILURES) == 1
    assert "Failed to find C compiler" in fused.FAILURES[0]
    assert fused.fused_mode("exact", torch.device("cuda")) == "off"
