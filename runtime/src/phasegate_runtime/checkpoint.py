"""Atomic files and per-unit checkpoints of a run directory.

Layout: ``units/baseline.json``, ``units/reference.json``, ``units/<method>_r<k>.json``,
``units/native_<method>.json``, ``directions/<name>.npy``. A unit's JSON is written last and is its commit
marker: a unit counts as done only when its JSON exists and carries this spec's hash. It lists the sha256 of
every file the unit wrote (``files``); a unit whose files no longer match is not done (:func:`file_problems`).
Every write goes to a temp file in the same directory and is renamed into place, so a kill at any instant
leaves either the old state or the complete new file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .spec import SpecError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a SIGTERM arrives as an exception and must not leave temp files behind.
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_UNHASHED = ("spec_hash", "record_sha256")


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a unit record's own content (canonical JSON, without ``spec_hash`` and the digest itself)."""
    content = {k: v for k, v in record.items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_problems(out: Path, record: dict[str, Any]) -> list[str]:
    """Why a unit checkpoint is not what its unit wrote: its own content changed (``record_sha256``), or a
    file it lists (``files``: path relative to ``out`` -> sha256) is missing or changed since (a direction
    flipped between attempts must not be reused). A digest guards against accidents and careless edits, not
    against someone who recomputes it: the frozen artifacts' manifest and signed decisions carry the rest."""
    if record.get("record_sha256") != record_digest(record):
        return ["its record changed since it was written (sha256 differs)"]
    files = record.get("files", {})
    if not isinstance(files, dict):
        return ["its file list is malformed"]
    problems = []
    for rel, digest in sorted(files.items()):
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel} changed since it was written (sha256 differs)")
    return problems


def unit_name(method: str, repeat: int) -> str:
    """The unit id used in events: ``hooks/r0``; ``baseline`` for the baseline."""
    return f"{method}/r{repeat}"


def unit_file(out: Path, method: str, repeat: int) -> Path:
    return out / "units" / f"{unit_stem(method, repeat)}.json"


def unit_stem(method: str, repeat: int) -> str:
    """The file stem of a method unit: ``hooks_r0``."""
    return f"{method}_r{repeat}"


def direction_file(out: Path, method: str, repeat: int) -> Path:
    return out / "directions" / f"{unit_stem(method, repeat)}.npy"


def reference_file(out: Path) -> Path:
    return out / "units" / "reference.json"


def native_file(out: Path, method: str) -> Path:
    return out / "units" / f"native_{method}.json"


def baseline_file(out: Path) -> Path:
    return out / "units" / "baseline.json"


def load_checkpoint(path: Path, spec_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if complete and for this spec; None if absent or unreadable.

    A checkpoint from a different spec is refused (SpecError) rather than overwritten: the output
    directory belongs to one spec, and silently mixing two would corrupt the parity comparison.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("spec_hash") != spec_hash:
        raise SpecError(
            "out",
            f"{path} was written for a different spec (hash {data.get('spec_hash')}); "
            "use a fresh output directory or delete it",
        )
    return data
