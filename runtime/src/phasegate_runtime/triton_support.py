"""What the hand-written Triton kernels (:mod:`.exact_norm`, :mod:`.cache_write`) share: Triton itself where
it is installed, the errors that mean a kernel cannot be built here, and the device a kernel may launch on."""

from __future__ import annotations

import torch

__all__ = ["BUILD_ERRORS", "libdevice", "on_current_cuda_device", "tl", "triton"]

BUILD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError, ImportError)
"""What building a kernel raises where it cannot run here (Triton's "Failed to find C compiler" is a
RuntimeError, a missing toolchain an OSError); the caller then keeps ATen's kernels for the rest of the
process. Errors of the device itself (out of memory, a CUDA fault) are not among them: the caller
re-raises."""

try:  # Triton ships with CUDA builds of torch; without it, no kernel applies anywhere.
    import triton
    import triton.language as tl
    from triton.compiler.errors import CompilationError

    BUILD_ERRORS += (CompilationError,)
except ImportError:  # pragma: no cover - every lock of this project has it
    triton = None
    tl = None
try:  # only the norm kernel needs it (its rsqrt is the one Inductor emits)
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - every lock of this project has it
    libdevice = None


def on_current_cuda_device(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is on the CUDA device a Triton kernel launches on (the current one)."""
    return tensor.is_cuda and tensor.device.index == torch.cuda.current_device()
