"""The fused decode-step kernels: the same arithmetic as transformers, and used only inside decode steps.

Inductor (Triton on CUDA, C++ on CPU) is not built here: CI has no GPU and a CPU build takes tens of seconds
per function. The tests compile with dynamo's ``eager`` backend instead, which traces each function exactly as
Inductor would receive it (``fullgraph=True``: a graph break fails the test) and runs the traced graph with
ordinary kernels, so outputs can be compared bit for bit. Inductor's own kernels are exercised by
``bench/gpu_protocol.py`` on the GPU (outputs identical across methods and repeats, graph == eager).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from phasegate_runtime import fused
from phasegate_runtime.decode import DECODE_COUNTS, install_fast_generate
from phasegate_runtime.generation import greedy_config, make_batches, new_token_ids
from phasegate_runtime.spec import DEFAULT_NUMERICS

from _data import ARCHS, EVAL


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Any, Any]]:
    """Compile with dynamo's eager backend into a fresh cache; yields that cache."""
    cache: dict[Any, Any] = {}
    monkeypatch.setattr(fused, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(fused, "_compiled", cache)
    yield cache
    torch._dynamo.reset()


def random_models() -> dict[str, torch.nn.Module]:
    """One small model per architecture, every parameter random (a fresh model's norm weights are all
    zeros or ones, which would hide a wrong scale)."""
    out = {}
    for arch in ARCHS:
        config = AutoConfig.for_model(
            arch, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=272,
        )  # fmt: skip
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for param in model.parameters():
                param.normal_()
        install_fast_generate(model)
        out[arch] = model
    return out


def test_every_norm_mlp_and_rotary_is_patched() -> None:
    for arch, model in random_models().items():
        n_layers = model.config.num_hidden_layers
        norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
        assert len(norms) >= 2 * n_layers + 1, arch
        assert all("forward" in vars(m) for m in norms), arch  # an instance forward: the patch
        mlps = [m for m in model.modules() if type(m).__name__.endswith("MLP")]
        assert len(mlps) == n_layers, arch
        assert all("forward" in vars(m) for m in mlps), arch
        modeling = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
        assert getattr(modeling.apply_rotary_pos_emb, "_phasegate_fused", False), arch


@pytest.mark.parametrize(
    ("mode", "compiled"),
    [
        ("all", {"rms_norm", "rms_norm_unit_offset", "silu_gate", "gelu_tanh_gate", "rotary"}),
        # The norms split: ATen's reduction, then only the pointwise tail compiled.
        ("exact", {"_rms_scale", "_unit_offset_scale", "silu_gate", "gelu_tanh_gate", "rotary"}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the casts inside a norm matter
def test_fused_pieces_equal_transformers_bit_for_bit(
    traced: dict[Any, Any], mode: fused.FusedMode, compiled: set[str], dtype: torch.dtype
) -> None:
    torch.manual_seed(1)
    for arch, model in random_models().items():
        model.to(dtype)
        for module in model.modules():
            name = type(module).__name__
            if name.endswith("RMSNorm") or name.endswith("MLP"):
                size = module.weight.shape[0] if name.endswith("RMSNorm") else model.config.hidden_size
                inp = (torch.randn(3, 1, size) * 4).to(dtype)
                with torch.no_grad():
                    reference = module(inp)
                    with fused.decode_steps(mode):
                        ours = module(inp)
                assert torch.equal(ours, reference), (arch, name)
        modeling = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
        q, k = torch.randn(3, 4, 1, 16).to(dtype), torch.randn(3, 2, 1, 16).to(dtype)
        cos, sin = torch.randn(3, 1, 16).to(dtype), torch.randn(3, 1, 16).to(dtype)
        reference = modeling.apply_rotary_pos_emb(q, k, cos, sin)
        with fused.decode_steps(mode):
            ours = modeling.apply_rotary_pos_emb(q, k, cos, sin)
        assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True)), arch
    assert {f.__name__ for f in traced} == compiled


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_with_fused_kernels_gives_the_same_tokens(
    load_tiny: Any, traced: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    """Every piece (``on``); ``exact`` below."""
    loaded = load_tiny(arch)
    rows, plain = unfused_decoder(loaded, monkeypatch, 12)
    assert not traced
    fusion(loaded, monkeypatch, "on")
    before = DECODE_COUNTS.copy()
    assert rows() == plain
    assert DECODE_COUNTS - before == {"eager": 1}
    # pyvene sets requires_grad=False on every parameter of a model it wraps: no recompilation (on the
    # GPU a recompile inside a CUDA graph capture would fail it).
    graphs = fused._graphs_compiled()
    params = list(loaded.model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(not p.requires_grad)
        assert rows() == plain
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    assert fused._graphs_compiled() == graphs
    expected = {"rms_norm_unit_offset", "gelu_tanh_gate", "rotary", "grouped_attention"}
    if arch != "gemma2":
        expected = {"rms_norm", "silu_gate", "rotary"}  # SDPA attention: transformers' own
    assert {f.__name__ for f in traced} == expected


def test_a_failed_compile_turns_fusion_off_and_decoding_goes_on(
    load_tiny: Any, traced: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_compiler(*_args: Any) -> Any:
        raise RuntimeError("Failed to find C compiler")  # what Triton says on an image without gcc

    monkeypatch.setattr(fused, "COMPILE_BACKEND", no_compiler)
    monkeypatch.setattr(fused, "FAILURES", [])
    loaded = load_tiny("gemma2")
    rows, plain = unfused_decoder(loaded, monkeypatch, 6)
    fusion(loaded, monkeypatch, "on")
    assert rows() == plain
    assert len(fused.FAILURES) == 1
    assert "Failed to find C compiler" in fused.FAILURES[0]
    assert fused.fused_mode("on", torch.device("cuda")) == "off"


@pytest.mark.parametrize("arch", ["gemma2", "qwen2"])
def test_exact_mode_decodes_the_same_tokens_and_leaves_attention_and_whole_norms_uncompiled(
    load_tiny: Any, traced: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    loaded = load_tiny(arch)
    rows, plain = unfused_decoder(loaded, monkeypatch, 12)
    # ``exact`` is CUDA only; here the decoder is told it runs on CUDA.
    fusion(loaded, monkeypatch, "exact")
    monkeypatch.setattr(fused, "fused_mode", lambda setting, _dev: "exact" if setting == "exact" else "off")
    assert rows() == plain
    expected = {"_rms_scale", "silu_gate", "rotary"}
    if arch == "gemma2":
        # Attention's products and softmax stay eager; only its pointwise scores are compiled.
        expected = {"_unit_offset_scale", "gelu_tanh_gate", "rotary", "attention_scores"}
    assert {f.__name__ for f in traced} == expected


def test_a_hook_on_the_activation_keeps_the_original_mlp(load_tiny: Any, traced: dict[Any, Any]) -> None:
    mlp = next(m for m in load_tiny("qwen2").model.modules() if type(m).__name__ == "Qwen2MLP")
    seen: list[torch.Tensor] = []
    handle = mlp.act_fn.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad(), fused.decode_steps("all"):
            mlp(torch.randn(2, 1, mlp.gate_proj.in_features))
    finally:
        handle.remove()
    assert len(seen) == 1
    assert not traced  # the fused gate was not used


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "FAILURES", [])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (fused.fused_mode("auto", cpu), fused.fused_mode("auto", cuda)) == ("off", "all")
    assert (fused.fused_mode("exact", cpu), fused.fused_mode("exact", cuda)) == ("off", "exact")
    assert (fused.fused_mode("off", cpu), fused.fused_mode("off", cuda)) == ("off", "off")
    assert (fused.fused_mode("on", cpu), fused.fused_mode("on", cuda)) == ("all", "all")


def decoder_of(loaded: Any, new_tokens: int) -> Callable[[], list[list[int]]]:
    """Greedy decoding of the eval prompts by ``loaded``'s generate: per call, each row's new token ids."""
    tok = loaded.tokenizer
    (batch,) = make_batches(tok, EVAL, len(EVAL), loaded.device)
    config = greedy_config(tok, new_tokens, [tok.eos_token_id])

    def rows() -> list[list[int]]:
        with torch.no_grad():
            ids = loaded.model.generate(**batch.model_inputs(), generation_config=config)
        return new_token_ids(ids, batch.prompt_len, [tok.eos_token_id])

    return rows


def unfused_decoder(
    loaded: Any, monkeypatch: pytest.MonkeyPatch, new_tokens: int
) -> tuple[Callable[[], list[list[int]]], list[list[int]]]:
    """:func:`decoder_of` and its rows with fused kernels off: what every fused decode must reproduce."""
    rows = decoder_of(loaded, new_tokens)
    fusion(loaded, monkeypatch, "off")
    return rows, rows()


def fusion(loaded: Any, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    """Decode ``loaded`` with fused kernels ``setting`` for the rest of the test (the spec's numerics)."""
    monkeypatch.setattr(
        loaded.model,
        "_phasegate_numerics",
        dataclasses.replace(DEFAULT_NUMERICS, fused_kernels=setting),
        raising=False,
    )


def test_the_compiled_site_check_measures_exactly_what_the_eager_one_does(traced: dict[Any, Any]) -> None:
    """Inside decode steps the site observer's check is compiled (:func:`fused.site_error`): it must report
    the same maximum as eagerly, zero only where every element matches, and NaN where one is NaN."""
    torch.manual_seed(4)
    raw = torch.randn(5, 1, 64).to(torch.bfloat16)
    delta = torch.randn(64).to(torch.bfloat16)
    right = raw + delta
    off = right.clone()
    off[2, 0, 7] += 0.5
    broken = right.clone()
    broken[4, 0, 63] = float("nan")
    for received in (right, off, broken):
        for before in (0.0, 0.25):
            eager, compiled = torch.tensor([before]), torch.tensor([before])
            fused.site_error(received, raw, delta, eager)
            with fused.decode_steps("exact"):
                fused.site_error(received, raw, delta, compiled)
            torch.testing.assert_close(compiled, eager, rtol=0, atol=0, equal_nan=True)
            if received is right:
                assert eager.tolist() == [before]  # zero error: the running maximum stays
            elif received is off:
                assert float(eager) == max(float((off - right).float().abs().max()), before)
            else:
                assert eager.isnan()
    assert {f.__name__ for f in traced} == {"site_error"}


@pytest.mark.parametrize("scale", [1.0, 0.999])
def test_a_watched_fused_decode_still_catches_a_wrong_addition(
    load_tiny: Any, traced: dict[Any, Any], monkeypatch: pytest.MonkeyPatch, scale: float
) -> None:
    """The compiled check runs in every decode step of a watched pass: a method adding 0.999 x delta in
    decode steps only (the prompt pass right) must still show, and only the compiled check sees those."""
    from phasegate_runtime.backend_hooks import forward_hook
    from phasegate_runtime.site import block_hidden, decoder_layers, replace_block_hidden
    from phasegate_runtime.site_check import install_site_observer

    loaded = load_tiny("qwen2")
    fusion(loaded, monkeypatch, "on")
    observer = install_site_observer(loaded.model)
    tok = loaded.tokenizer
    (batch,) = make_batches(tok, EVAL, len(EVAL), loaded.device)
    delta = torch.full((loaded.hidden_size,), 0.5)

    def add(_m: Any, _a: Any, out: Any) -> Any:
        hidden = block_hidden(out)
        return replace_block_hidden(out, hidden + (delta * scale if hidden.shape[1] == 1 else delta))

    with observer.watch(1, delta, loaded.device) as check, forward_hook(decoder_layers(loaded.model)[1], add):
        loaded.model.generate(
            **batch.model_inputs(), generation_config=greedy_config(tok, 6, [tok.eos_token_id])
        )
    assert check[0].exact is (scale == 1.0)
    assert check[0].forward_passes >= 2  # the prefill and decode steps
    assert "site_error" in {f.__name__ for f in traced}


def test_a_watch_hands_the_compiled_check_ordinary_tensors_whoever_opens_it() -> None:
    """The compiled check is specialised on inference vs ordinary tensors: a watch opened inside inference
    mode once made the next capture recompile (found on the H200 by ``bench/profile_step.py``)."""
    from phasegate_runtime.site_check import _Watch

    with torch.inference_mode():
        delta = torch.ones(8)
        watch = _Watch(0, delta, torch.device("cpu"))
        watch.saw_output(0, torch.zeros(2, 1, 8))
        watch.saw_input(0, torch.ones(2, 1, 8))  # what follows block 0 received
    assert delta.is_inference()
    for tensor in (watch.delta, watch.site_max, watch.elsewhere_max, watch.counts, watch.zero):
        assert tensor is not None
        assert not tensor.is_inference()
    assert watch.result().max_abs_error == 0.0  # ones == zeros + delta
