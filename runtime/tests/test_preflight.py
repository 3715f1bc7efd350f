"""The preflight refuses, before any GPU time, what the run itself would refuse after loading the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from phasegate_runtime.cli import main
from phasegate_runtime.preflight import preflight
from phasegate_runtime.spec import SpecError, parse_run_spec

from _data import HARMFUL, run_spec_dict

TINY = {"revision": None, "dtype": "float32", "device": "cpu", "attn_implementation": None, "tiny_seed": 0}


def spec(cache_dir: Path, **overrides: Any) -> Any:
    return parse_run_spec(run_spec_dict(cache_dir, **overrides))


def test_a_valid_tiny_spec_passes_with_the_models_depth(cache_dir: Path) -> None:
    found = preflight(spec(cache_dir))
    assert (found.checked, found.num_layers, found.note) == (True, 3, None)


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"site": {"layer": 3, "position": -1}}, "site.layer", "must be < num_hidden_layers (3)"),
        ({"site": {"layer": 1, "position": -50}}, "prompts.harmful[0]", "fewer than site.position (-50)"),
        ({"model": {"id": "tiny:gpt9", **TINY}}, "model.id", "unknown tiny arch 'gpt9'"),
        ({"model": {"id": "bad//id", **TINY}}, "model.id", "not a hub model id"),
        ({"model": {"id": "/no/such/dir", **TINY}}, "model.id", "local path does not exist"),
    ],
)  # fmt: skip
def test_invalid_by_definition_is_refused_with_the_field(
    cache_dir: Path, overrides: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(SpecError) as info:
        preflight(spec(cache_dir, **overrides))
    assert info.value.path == field
    assert reason in info.value.reason


def test_identical_contrast_sets_are_refused(cache_dir: Path) -> None:
    prompts = {"harmful": HARMFUL, "harmless": list(reversed(HARMFUL)), "eval": ["hi"]}
    with pytest.raises(SpecError, match="same prompt set") as info:
        preflight(spec(cache_dir, prompts=prompts))
    assert info.value.path == "prompts.harmless"


def test_a_hub_model_out_of_reach_is_not_a_verdict(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = preflight(spec(cache_dir, model={"id": "org/not-cached", **TINY}))
    assert found.checked is False
    assert found.note is not None
    assert "could not be fetched here" in found.note


def test_the_command_exits_2_naming_the_field(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(run_spec_dict(cache_dir, site={"layer": 7, "position": -1})))
    assert main(["preflight", "--spec", str(path)]) == 2
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"event": "error", "kind": "invalid_spec", "path": "site.layer",
                    "message": "site.layer: must be < num_hidden_layers (3)"}  # fmt: skip
    path.write_text(json.dumps(run_spec_dict(cache_dir)))
    assert main(["preflight", "--spec", str(path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {
        "event": "preflight",
        "model_key": "tiny-qwen",
        "checked": True,
        "num_layers": 3,
        "note": None,
    }


def test_one_process_checks_every_model_in_order_and_stops_at_the_first_invalid(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    paths = []
    for key, layer in (("first", 1), ("second", 7), ("third", 1)):
        paths.append(tmp_path / f"{key}.json")
        paths[-1].write_text(
            json.dumps(run_spec_dict(cache_dir, model_key=key, site={"layer": layer, "position": -1}))
        )
    assert main(["preflight", *(a for p in paths for a in ("--spec", str(p)))]) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    # The first model's verdict, then the second's error: the caller attributes it to the first without one.
    assert [(e["event"], e.get("model_key")) for e in events] == [("preflight", "first"), ("error", None)]
    assert events[-1]["path"] == "site.layer"
