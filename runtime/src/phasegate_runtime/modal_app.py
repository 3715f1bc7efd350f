"""The Modal app: one GPU function that runs a per-model job (``modal_job.run_model_body``) in a container.

Deploy once per code change (``modal deploy -m phasegate_runtime.modal_app`` from runtime/, with
``PYTHONPATH=src``); the launcher looks the function up by name and picks the GPU type and the timeout per
call with ``Function.with_options`` (each GPU type gets its own container pool).

- Image: Debian slim + Python 3.11 + ``uv sync --frozen`` of runtime/uv.lock without the dev/tools/modal
  groups, i.e. exactly the locked runtime dependencies of the local backend; the package source is added last.
- Volume ``phasegate-data``: ``/data/models`` is the Hugging Face download cache (``cache_dir``), and
  ``/data/runs/<phase>/<model>`` the run's checkpoint folder, kept across attempts so a retry resumes.
- Secret ``hf-secret``: must define ``HF_TOKEN`` (gated models such as Gemma need it).
- Dict ``phasegate-launches``: the launcher's call records and the containers' run claims (modal_job).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import modal

from .modal_job import (
    APP_NAME,
    APP_TAGS,
    CPU_REQUEST_CORES,
    DICT_NAME,
    MEMORY_REQUEST_MIB,
    SCALEDOWN_WINDOW_S,
    SECRET_NAME,
    VOLUME_NAME,
    VolumePaths,
    call_is_over,
    prefetch_body,
    run_in_container,
    smoke_body,
)

VOLUME_ROOT = Path("/data")
# The default per-call timeout; the launcher overrides it with what the attempt may run.
DEFAULT_TIMEOUT_S = 60 * 60

_RUNTIME_DIR = Path(__file__).resolve().parents[2]

image = (
    modal.Image.debian_slim(python_version="3.11")
    # Triton builds a small C launcher the first time it compiles the fused decode kernels (fused.py).
    .apt_install("gcc")
    .uv_sync(str(_RUNTIME_DIR), frozen=True, extra_options="--no-default-groups", uv_version="0.13.8")
    .env(
        {
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Compiled kernels cached on the Volume: a later container skips most of the compile time
            # (7 s cold against 2 s cached for a 9B model on an H200, BENCHMARKS.md).
            "TORCHINDUCTOR_CACHE_DIR": f"{VOLUME_ROOT}/cache/torchinductor",
            "TRITON_CACHE_DIR": f"{VOLUME_ROOT}/cache/triton",
        }
    )
    .add_local_python_source("phasegate_runtime")
)

app = modal.App(APP_NAME, tags=APP_TAGS, image=image)
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
launches = modal.Dict.from_name(DICT_NAME, create_if_missing=True)
# A missing HF_TOKEN is found when the app is deployed, not on a paid GPU.
hf_secret = modal.Secret.from_name(SECRET_NAME, required_keys=["HF_TOKEN"])


def _is_live(call_id: str) -> bool:
    """Only a returned value or an exception that says the call is over means "not live": a network error
    while polling says nothing, and a claim held by a call that may be running must not be taken over."""
    try:
        modal.FunctionCall.from_id(call_id).get(timeout=0)
    except TimeoutError:  # the builtin: no output yet, the call is queued or running
        return True
    except Exception as err:  # noqa: BLE001 - sorted by call_is_over
        return not call_is_over(err)
    return False


@app.function(
    gpu="A10G",
    timeout=DEFAULT_TIMEOUT_S,
    volumes={str(VOLUME_ROOT): volume},
    secrets=[hf_secret],
    # No platform retries: the workflow retries, and every attempt must get its own ledger line.
    retries=0,
    # A container idles (and is billed) this long after its call; one call per phase and model needs no
    # warm pool (Modal's default is 60 s). The ledger adds it to every call (modal_job.SCALEDOWN_WINDOW_S).
    scaledown_window=SCALEDOWN_WINDOW_S,
    # The launcher sets the CPU and memory limits per call (with_options), from the pricing table.
    cpu=CPU_REQUEST_CORES,
    memory=MEMORY_REQUEST_MIB,
)
def run_model(spec: dict[str, Any]) -> dict[str, Any]:
    return run_in_container(
        spec,
        call_id=modal.current_function_call_id() or "unknown",
        # Modal's container (task) id: a preempted input restarts in another container with the same call id.
        task_id=os.environ.get("MODAL_TASK_ID", "unknown"),
        claims=launches,
        volume=volume,
        paths=VolumePaths(VOLUME_ROOT),
        is_live=_is_live,
    )


@app.function(timeout=3 * 60 * 60, volumes={str(VOLUME_ROOT): volume}, secrets=[hf_secret], cpu=2.0,
              memory=4096, retries=2, scaledown_window=SCALEDOWN_WINDOW_S)  # fmt: skip
def prefetch_model(model: dict[str, Any]) -> dict[str, Any]:
    """Downloads a model's weights into the Volume's model cache on a CPU container (GPU seconds are ~20x the
    price of a CPU's: the first run of a 9B model would otherwise pay ~34 GB of download at GPU rates)."""
    result = prefetch_body(model, VolumePaths(VOLUME_ROOT))
    volume.commit()
    return result


@app.function(gpu="A10G", timeout=5 * 60, retries=0, scaledown_window=SCALEDOWN_WINDOW_S)
def smoke(expected_gpu: str) -> dict[str, Any]:
    """`phasegate modal check`: the driver, CUDA, torch and the GPU a call really gets, in one short call."""
    return smoke_body(expected_gpu)
