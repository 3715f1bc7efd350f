from pathlib import Path

import torch
from safetensors.torch import load_file

from phasegate_runtime.tiny import build_tokenizer, ensure_tiny_model


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_same_seed_gives_bit_identical_weights(tmp_path: Path, cache_dir: Path) -> None:
    a = ensure_tiny_model(cache_dir, "llama", 0)
    b = ensure_tiny_model(tmp_path, "llama", 0)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_different_seed_gives_different_weights(tmp_path: Path, cache_dir: Path) -> None:
    wa = _weights(ensure_tiny_model(cache_dir, "llama", 0))
    wb = _weights(ensure_tiny_model(tmp_path, "llama", 1))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_reuses_existing_directory(cache_dir: Path) -> None:
    path = ensure_tiny_model(cache_dir, "qwen2", 0)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(cache_dir, "qwen2", 0) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert path.name == "tiny-qwen2-s0"
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_tokenizer_round_trips_bytes_and_left_pads() -> None:
    tok = build_tokenizer()
    text = "héllo\nworld"
    assert tok.decode(tok(text)["input_ids"]) == text
    enc = tok(["a", "abc"], padding=True)
    assert enc["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert enc["attention_mask"][0] == [0, 0, 1]
