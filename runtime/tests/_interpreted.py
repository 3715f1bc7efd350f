"""Running a Triton kernel's check under Triton's CPU interpreter (CI has no GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import phasegate_runtime

_SRC = Path(phasegate_runtime.__file__).resolve().parents[1]


def run_interpreted(code: str) -> None:
    """Runs ``code`` in a fresh interpreter with ``TRITON_INTERPRET=1`` (read when Triton is imported, so it
    cannot be switched on inside this process); it must print ``ok`` and exit 0."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(_SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
