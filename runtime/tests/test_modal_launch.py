"""Launch / reattach / cancel against the double at the Modal SDK boundary (phasegate_runtime.modal_fake)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from phasegate_runtime import modal_launch
from phasegate_runtime.modal_fake import FakeCall, FakeModal
from phasegate_runtime.modal_job import call_is_over, claim_call, claim_key, release_claim, take_claim
from phasegate_runtime.modal_launch import (
    RECORD_FILE,
    Emit,
    Job,
    Polling,
    cancel,
    launch,
    main,
    merged_seconds,
)

from _data import run_spec_dict, write_json

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "phase1-tooling-parity.json"


class WorkerDied(BaseException):
    """The worker process vanishing while the launcher waits (SIGKILL: no handler, no cleanup)."""


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def job(tmp_path: Path) -> Job:
    spec = write_json(tmp_path / "spec.json", run_spec_dict(tmp_path / "models", repeats=1))
    return Job(phase_id="demo-ab12cd34", model_key="tiny-qwen", attempt=1, gpu="A10G", timeout_s=600,
               spec_path=spec, out_dir=tmp_path / "out")  # fmt: skip


def _attempt(job: Job, n: int) -> Job:
    return Job(**{**job.__dict__, "attempt": n})


class BoundedEmit(Emit):
    """Fails a test whose launcher would wait forever on a call that never finishes, instead of hanging."""

    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream)
        self.polls = 0

    def __call__(self, event: str, **fields: Any) -> None:
        self.polls += event == "running"
        if self.polls > 50:
            raise AssertionError(f"the launcher is still waiting on {fields.get('call_id')}")
        super().__call__(event, **fields)


def _launch(job: Job, fake: FakeModal, unknown_for_s: float = 600.0) -> tuple[int, list[dict[str, Any]]]:
    stream = io.StringIO()
    code = launch(job, fake, BoundedEmit(stream), Polling(poll_s=0.001, unknown_for_s=unknown_for_s))
    return code, _events(stream)


def test_launch_spawns_once_and_copies_results_and_ids(job: Job) -> None:
    fake = FakeModal()
    code, events = _launch(job, fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1"]
    assert fake.call("fc-fake-1")["gpu"] == "A10G"
    # The call's timeout leaves room for its scale-down and stop within the attempt's 600 s.
    assert 600 - modal_launch.AFTER_END_MS / 1000 - 1 <= fake.call("fc-fake-1")["timeout_s"] <= 600 - 12
    result = json.loads((job.out_dir / "result.json").read_text())
    assert result["fake_modal_call"] == "fc-fake-1"
    directions = sorted(p.name for p in (job.out_dir / "directions").iterdir())
    assert directions == ["hooks_r0.npy", "nnsight_r0.npy", "pyvene_r0.npy"]
    record = json.loads((job.out_dir / RECORD_FILE).read_text())
    assert (record["call_id"], record["app_id"], record["status"]) == ("fc-fake-1", "ap-fake", "finished")
    assert fake.launches.get("demo-ab12cd34/tiny-qwen")["call_id"] == "fc-fake-1"
    windows = events[-1].pop("windows")
    assert events[-1] == {"event": "finished", "result": str(job.out_dir / "result.json"),
                          "gpu_seconds": 12.5, "call_id": "fc-fake-1", "app_id": "ap-fake",
                          "reattached": False, "reused": False}  # fmt: skip
    # The call's billable window: from the spawn request to its end plus idle scale-down and the stop.
    [window] = windows
    assert (window["call_id"], window["resource"]) == ("fc-fake-1", "gpu")
    spawned_ms = fake.call("fc-fake-1")["spawned_at"] * 1000
    assert window["from_ms"] <= spawned_ms
    assert window["to_ms"] - spawned_ms >= modal_launch.AFTER_END_MS


@pytest.mark.parametrize("lost", ["launch record", "nothing"])
def test_the_worker_died_after_spawn_no_second_spawn(job: Job, lost: str) -> None:
    fake = FakeModal(outcome="hang")
    fake.die_on_get = WorkerDied()
    with pytest.raises(WorkerDied):
        _launch(job, fake)
    assert fake.spawned == ["fc-fake-1"]
    if lost == "launch record":  # e.g. a fresh worker on another machine: only the Modal Dict knows the call
        (job.out_dir / RECORD_FILE).unlink()
    fake.die_on_get = None
    fake.set_outcome("fc-fake-1", "ok")
    code, events = _launch(_attempt(job, 2), fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1"]
    assert {"event": "launched", "call_id": "fc-fake-1", "app_id": "ap-fake", "reattached": True,
            "attempt": 2} in events  # fmt: skip
    assert json.loads((job.out_dir / "result.json").read_text())["fake_modal_call"] == "fc-fake-1"


def _orphaned_running_call(job: Job) -> FakeModal:
    """Attempt 1 spawned fc-fake-1, which runs on; its worker died while waiting on it."""
    fake = FakeModal(outcome="hang")
    fake.die_on_get = WorkerDied()
    with pytest.raises(WorkerDied):
        _launch(job, fake)
    fake.die_on_get = None
    return fake


def test_reattaches_to_a_call_that_is_still_running(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _orphaned_running_call(job)
    polls = {"n": 0}
    original_get = FakeCall.get

    def get(call: FakeCall, timeout: float | None = None) -> Any:
        polls["n"] += 1
        if polls["n"] == 3:  # the probe, one "running" poll, then the call finishes
            fake.set_outcome("fc-fake-1", "ok")
        return original_get(call, timeout)

    monkeypatch.setattr(FakeCall, "get", get)
    code, events = _launch(_attempt(job, 2), fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1"]
    assert [e["event"] for e in events][:3] == ["launching", "launched", "running"]


@pytest.mark.parametrize("outcome", ["fail", "crash"])
def test_retry_after_a_failed_call_spawns_a_new_one(job: Job, outcome: str) -> None:
    fake = FakeModal(outcome=outcome)
    code, events = _launch(job, fake)
    assert code == 1
    assert events[-1]["event"] == "error"
    assert events[-1]["kind"] == "failure"
    assert events[-1]["call_id"] == "fc-fake-1"
    fake.outcome = "ok"
    code, events = _launch(_attempt(job, 2), fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1", "fc-fake-2"]
    assert events[1]["event"] == "previous_call"
    assert events[1]["state"] in {"done", "failed"}
    record = json.loads((job.out_dir / RECORD_FILE).read_text())
    assert [(c["call_id"], c["attempt"]) for c in record["calls"]] == [("fc-fake-1", 1), ("fc-fake-2", 2)]
    assert fake.launches.get("demo-ab12cd34/tiny-qwen")["call_id"] == "fc-fake-2"


def test_invalid_spec_exits_2(job: Job) -> None:
    code, events = _launch(job, FakeModal(outcome="invalid"))
    assert code == 2
    assert events[-1]["kind"] == "invalid_spec"
    assert events[-1]["gpu_seconds"] == 3.0


def test_sigterm_detaches_and_cancel_cancels_the_remote_call(job: Job) -> None:
    fake = FakeModal(outcome="hang")
    fake.die_on_get = WorkerDied()
    with pytest.raises(WorkerDied):
        _launch(job, fake)
    fake.die_on_get = None
    assert fake.call("fc-fake-1")["cancelled"] is False  # the launcher going away does not cancel
    stream = io.StringIO()
    assert cancel(job.phase_id, job.model_key, job.out_dir, fake, Emit(stream)) == 0
    assert fake.call("fc-fake-1")["cancelled"] is True
    [event] = _events(stream)
    assert (event["event"], event["call_ids"]) == ("cancelled", ["fc-fake-1"])
    assert json.loads((job.out_dir / RECORD_FILE).read_text())["status"] == "cancelled"
    fake.outcome = "ok"  # a cancelled call is never reattached to
    code, _ = _launch(_attempt(job, 2), fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1", "fc-fake-2"]


def test_cancel_finds_an_unrecorded_call_through_its_container_claim(job: Job) -> None:
    fake = FakeModal(outcome="hang")
    fake.spawn({"phase_id": job.phase_id}, gpu="A10G", timeout_s=600)  # its launcher died before recording it
    fake.launches.put(claim_key(job.phase_id, job.model_key), {"call_id": "fc-fake-1", "task": "ta-1"})
    stream = io.StringIO()
    assert cancel(job.phase_id, job.model_key, job.out_dir, fake, Emit(stream)) == 0
    assert fake.call("fc-fake-1")["cancelled"] is True


def test_a_duplicate_call_reattaches_to_the_orphan_that_owns_the_run(job: Job) -> None:
    # The worker died between spawn and any record: the orphan fc-fake-1 is invisible to the retry, which
    # spawns fc-fake-2; fc-fake-2's container finds fc-fake-1's claim and returns "duplicate".
    fake = FakeModal(outcome="ok")
    fake.spawn({"phase_id": "demo-ab12cd34", "model_key": "tiny-qwen", "methods": ["hooks"], "repeats": 1},
               gpu="A10G", timeout_s=600)  # fmt: skip
    fake.outcome = "duplicate:fc-fake-1"
    code, events = _launch(job, fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1", "fc-fake-2"]
    assert json.loads((job.out_dir / "result.json").read_text())["fake_modal_call"] == "fc-fake-1"
    assert fake.launches.get("demo-ab12cd34/tiny-qwen")["call_id"] == "fc-fake-1"
    assert events[-1]["call_id"] == "fc-fake-1"


def test_a_finished_record_needs_no_modal_call(job: Job) -> None:
    fake = FakeModal()
    assert _launch(job, fake)[0] == 0
    fake.launches.pop("demo-ab12cd34/tiny-qwen")
    code, events = _launch(_attempt(job, 2), fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1"]
    assert events[-1]["reattached"] is True


def test_missing_credentials_one_attempt_clear_error(
    job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-such.toml"))

    def port() -> FakeModal:
        raise AssertionError("nothing may reach Modal without credentials")

    argv = ["launch", "--phase", job.phase_id, "--model", job.model_key, "--attempt", "1", "--gpu", "A10G",
            "--timeout-minutes", "10", "--spec", str(job.spec_path), "--out", str(job.out_dir)]  # fmt: skip
    assert main(argv, port_factory=port) == modal_launch.EXIT_MISSING_CREDENTIALS == 3
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert event["event"] == "error"
    assert event["kind"] == "missing_credentials"
    assert "MODAL_TOKEN_ID" in event["message"]
    assert "modal token" in event["message"]


def test_credentials_from_env_or_modal_toml(tmp_path: Path) -> None:
    toml = tmp_path / ".modal.toml"
    assert not modal_launch.has_credentials({"MODAL_CONFIG_PATH": str(toml)})
    assert not modal_launch.has_credentials({"MODAL_TOKEN_ID": "ak-1", "MODAL_CONFIG_PATH": str(toml)})
    assert modal_launch.has_credentials({"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"})
    toml.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    assert modal_launch.has_credentials({"MODAL_CONFIG_PATH": str(toml)})


def test_claims_let_one_container_run(tmp_path: Path) -> None:
    store = FakeModal().launches
    key = claim_key("p", "m")
    live = {"fc-a"}
    assert take_claim(store, key, "fc-a", "ta", is_live=live.__contains__) is None
    assert (
        take_claim(store, key, "fc-b", "tb", is_live=live.__contains__) == "fc-a"
    )  # live owner: newcomer yields
    assert take_claim(store, key, "fc-a", "ta", is_live=live.__contains__) is None  # re-entry by the owner
    live.clear()  # fc-a was killed outright and never released: its claim is stale
    assert take_claim(store, key, "fc-b", "tb", is_live=live.__contains__, sleep=lambda _: None) is None
    assert claim_call(store.get(key)) == "fc-b"
    # Two takers of a stale claim: the one overwritten during its settle yields to the last writer.
    live.clear()
    d = {"call_id": "fc-d", "task": "td"}
    assert take_claim(store, key, "fc-c", "tc", is_live=live.__contains__,
                      sleep=lambda _: store.put(key, d)) == "fc-d"  # fmt: skip
    release_claim(store, key, "fc-c", "tc")  # not the holder: no effect
    assert claim_call(store.get(key)) == "fc-d"
    release_claim(store, key, "fc-d", "td")
    assert store.get(key) is None


def test_a_preempted_input_restarts_and_the_old_container_cannot_release_the_new_claim() -> None:
    store = FakeModal().launches
    key = claim_key("p", "m")
    assert take_claim(store, key, "fc-a", "ta-1", is_live=lambda _: True) is None
    # Modal restarts the preempted input in a new container: same call id, another task. The call is live
    # (it is this very call), yet the restarted copy must run: the old container is gone.
    assert take_claim(store, key, "fc-a", "ta-2", is_live=lambda _: True) is None
    assert store.get(key)["task"] == "ta-2"
    release_claim(store, key, "fc-a", "ta-1")  # the old container's late clean-up
    assert store.get(key)["task"] == "ta-2"  # the new one still holds it: no third container may start
    assert take_claim(store, key, "fc-b", "tb", is_live=lambda _: True) == "fc-a"
    release_claim(store, key, "fc-a", "ta-2")
    assert store.get(key) is None


def test_reconcile_without_an_account_says_billing_could_not_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    (tmp_path / "qwen-7b").mkdir()
    hour = 3_600_000
    base = 1_795_000_000_000 // hour * hour  # a whole hour
    # fc-1 reported twice (a detached attempt, then the reattached one): its overlap counts once.
    windows = [
        {"call_id": "fc-1", "from_ms": base, "to_ms": base + 400_000, "resource": "gpu"},
        {"call_id": "fc-1", "from_ms": base + 100_000, "to_ms": base + 500_000, "resource": "gpu"},
        {"call_id": "fc-2", "from_ms": base + 600_000, "to_ms": base + 700_000, "resource": "gpu"},
    ]
    record = {"app_id": "ap-1", "calls": [{"call_id": "fc-1"}], "windows": windows}
    write_json(tmp_path / "qwen-7b" / RECORD_FILE, record)
    from datetime import UTC, datetime

    now = datetime.fromtimestamp((base + 1000_000) / 1000, UTC)  # still inside that hour
    assert modal_launch.reconcile(tmp_path, PROTOCOL, Emit(), now=now) == 0
    out = capsys.readouterr()
    report = json.loads(out.out.splitlines()[-1])
    qwen, gemma = report["models"]
    assert qwen["bound_gpu_seconds"] == 600.0
    pricing = json.loads((PROTOCOL.parent / "pricing" / "modal-gpu.json").read_text())
    box = pricing["modal_container"]
    assert qwen["bound_usd"]["gpu"] == round(600 * pricing["usd_per_second"]["A10G"], 4)
    assert qwen["bound_usd"]["memory"] == round(600 * box["memory_gib"] * box["usd_per_gib_second"], 4)
    assert gemma["bound_gpu_seconds"] == 0.0
    assert report["total"]["billed_usd"] is None
    assert report["billing_window"]["complete"] is False
    assert report["billing_note"].startswith("billing could not be read: no Modal credentials")
    assert "INCOMPLETE" in report["billing_note"]
    assert "ledger bound $" in out.err


def test_merged_seconds_counts_each_call_second_once() -> None:
    w = [
        {"call_id": "a", "from_ms": 0, "to_ms": 10_000},
        {"call_id": "a", "from_ms": 5_000, "to_ms": 12_000},
        {"call_id": "b", "from_ms": 0, "to_ms": 1_000},
        {"call_id": "a", "from_ms": 20_000, "to_ms": 21_000},
    ]
    assert merged_seconds(w) == 12 + 1 + 1  # two calls running at once are both billed


def test_network_errors_while_waiting_are_waited_out_not_a_second_run(job: Job) -> None:
    fake = FakeModal(run_s=0.05, probe_errors=3)
    code, events = _launch(job, fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1"]
    assert sum(1 for e in events if e.get("poll_error")) == 3


def _billed_ms(fake: FakeModal) -> float:
    with fake.state() as s:
        return sum(float(c["billed_s"]) for c in s["calls"].values()) * 1000


def test_a_preempted_call_is_billed_for_both_containers_and_the_window_covers_them(job: Job) -> None:
    fake = FakeModal(outcome="preempt", run_s=0.02)
    code, events = _launch(job, fake)
    assert code == 0
    call = fake.call("fc-fake-1")
    assert len(call["containers"]) == 2
    assert merged_seconds(events[-1]["windows"]) * 1000 >= _billed_ms(fake)


def test_a_late_retry_after_completion_reuses_the_finished_run(job: Job) -> None:
    """Attempt 1 finished on Modal but its worker never reported it; the Dict entry and the local record are
    gone (a retry on another host, after Modal's 7 days): the new call finds the done marker, runs nothing."""
    fake = FakeModal(run_s=0.05)
    assert _launch(job, fake)[0] == 0
    fake.launches.pop("demo-ab12cd34/tiny-qwen")
    (job.out_dir / RECORD_FILE).unlink()
    code, events = _launch(_attempt(job, 2), fake)
    assert code == 0
    assert fake.spawned == ["fc-fake-1", "fc-fake-2"]
    assert events[-1]["reused"] is True
    with fake.state() as s:
        assert s["runs"] == {"demo-ab12cd34/tiny-qwen": 1}  # one paid run of the work


def test_every_window_ends_after_what_modal_bills(job: Job) -> None:
    """Over a crash, a retry and a duplicate, the launcher's windows cover every billed container-second."""
    fake = FakeModal(outcome="crash", run_s=0.05)
    windows: list[dict[str, Any]] = []
    code, events = _launch(job, fake)
    windows += events[-1]["windows"]
    assert code == 1
    fake.outcome = "ok"
    code, events = _launch(_attempt(job, 2), fake)
    windows += events[-1]["windows"]
    assert code == 0
    assert merged_seconds(windows) * 1000 >= _billed_ms(fake)


def test_cancel_reports_the_stopped_call_window(job: Job) -> None:
    fake = _orphaned_running_call(job)
    stream = io.StringIO()
    assert cancel(job.phase_id, job.model_key, job.out_dir, fake, Emit(stream)) == 0
    [event] = _events(stream)
    [window] = event["windows"]
    assert window["call_id"] == "fc-fake-1"
    assert window["to_ms"] - window["from_ms"] >= _billed_ms(fake)


def test_a_hub_model_is_downloaded_on_a_cpu_container_first_and_once(job: Job, tmp_path: Path) -> None:
    spec = json.loads(job.spec_path.read_text())
    spec["model"]["id"] = "Qwen/Qwen2.5-7B-Instruct"
    write_json(job.spec_path, spec)
    fake = FakeModal()
    code, events = _launch(job, fake)
    assert code == 0
    with fake.state() as st:
        assert [c["kind"] for c in st["calls"].values()] == ["prefetch", "run"]
    assert {w["resource"] for w in events[-1]["windows"]} == {"cpu", "gpu"}
    fake.launches.pop("demo-ab12cd34/tiny-qwen")
    (job.out_dir / RECORD_FILE).unlink()
    assert _launch(_attempt(job, 2), fake)[0] == 0
    with fake.state() as st:
        assert [c["kind"] for c in st["calls"].values()] == ["prefetch", "run", "run"]  # downloaded once


def test_modal_check_reports_the_gpu_it_got(capsys: pytest.CaptureFixture[str]) -> None:
    assert modal_launch.check("H100", FakeModal(), Emit(), poll_s=0.001) == 0
    assert "modal check H100: ok (gpu NVIDIA H100" in capsys.readouterr().err


def test_a_network_error_while_probing_a_live_call_does_not_spawn_a_second_one(job: Job) -> None:
    # Attempt 2 probes the orphaned call and the poll fails on the network: that says nothing about the
    # call, so it must be treated as live, never paid for twice.
    fake = _orphaned_running_call(job)
    fake.set_outcome("fc-fake-1", "probe_error")
    code, events = _launch(_attempt(job, 2), fake, unknown_for_s=0.01)
    assert fake.spawned == ["fc-fake-1"]
    assert code == 1  # the poll keeps failing: retryable, and the retry reattaches to the same call
    assert any(e["event"] == "launched" and e.get("reattached") for e in events)


def test_the_claim_is_kept_when_its_owner_cannot_be_polled(tmp_path: Path) -> None:
    fake = FakeModal()
    key = claim_key("p", "m")
    unknown = {"fc-a"}  # fc-a's state cannot be read (network error): it may be running

    def is_live(call_id: str) -> bool:
        return call_id in unknown

    assert take_claim(fake.launches, key, "fc-a", "ta-1", is_live=is_live) is None
    assert take_claim(fake.launches, key, "fc-b", "ta-2", is_live=is_live, sleep=lambda _: None) == "fc-a"


def test_a_timeout_error_raised_by_the_remote_function_is_a_failure_not_still_running(job: Job) -> None:
    fake = FakeModal(outcome="remote_timeout")
    code, events = _launch(job, fake)
    assert code == 1
    assert events[-1]["event"] == "error"
    assert "raised by the remote function" in events[-1]["message"]


def test_releasing_a_claim_that_is_already_gone_is_not_an_error() -> None:
    fake = FakeModal()
    key = claim_key("p", "m")
    assert take_claim(fake.launches, key, "fc-a", "ta-1", is_live=lambda _: False) is None
    fake.launches.pop(key)
    release_claim(
        fake.launches, key, "fc-a", "ta-1"
    )  # no KeyError: a finished run is not turned into a failure
    assert fake.launches.get(key) is None


def test_only_known_modal_exceptions_mean_the_call_is_over() -> None:
    from phasegate_runtime.modal_fake import (
        InputCancellation,
        NotFoundError,
        ProbeConnectionError,
        RemoteError,
    )

    assert all(call_is_over(e) for e in (RemoteError("x"), NotFoundError("x"), InputCancellation("x")))
    assert not any(call_is_over(e) for e in (ProbeConnectionError("x"), ConnectionError("x"), OSError("x")))


@pytest.mark.parametrize(
    ("outcome", "says"), [("auth_error", "rejected the credentials"), ("not_deployed", "modal deploy")]
)
def test_setup_errors_are_final_with_what_to_do(
    job: Job, outcome: str, says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    fake = FakeModal(outcome=outcome)
    args = ["launch", "--phase", job.phase_id, "--model", job.model_key, "--attempt", "1", "--gpu", "A10G",
            "--timeout-minutes", "10", "--spec", str(job.spec_path), "--out", str(job.out_dir)]  # fmt: skip
    assert main(args, port_factory=lambda: fake) == 3  # not retried: every retry would fail the same way
    assert says in capsys.readouterr().err
    assert fake.spawned == []


QUICK = {"max_new_tokens": 3, "batch_size": 2}


def test_an_executed_call_runs_the_real_container_body_and_its_output_is_the_runtimes(
    tmp_path: Path,
) -> None:
    # The double's `execute` outcome: the container body (claim, runtime run, done marker) in a child process.
    spec = write_json(
        tmp_path / "spec.json",
        run_spec_dict(tmp_path / "models", repeats=1, methods=["hooks"], generation=QUICK),
    )
    job = Job(phase_id="demo-ab12cd34", model_key="tiny-qwen", attempt=1, gpu="A10G", timeout_s=600,
              spec_path=spec, out_dir=tmp_path / "out")  # fmt: skip
    fake = FakeModal(tmp_path / "modal.json", outcome="execute")
    stream = io.StringIO()
    assert launch(job, fake, Emit(stream), Polling(poll_s=0.05, unknown_for_s=600)) == 0
    result = json.loads((job.out_dir / "result.json").read_text())
    assert result["model_key"] == "tiny-qwen"
    assert "fake_modal_call" not in result
    assert (job.out_dir / "directions" / "hooks_r0.npy").exists()
    call = fake.call("fc-fake-1")
    assert call["reused"] is False
    assert call["billed_s"] > 0
    # The run's done marker on the "Volume": a late second call reuses it instead of running again.
    late = fake.spawn(json.loads(spec.read_text()), gpu="A10G", timeout_s=600)
    deadline = time.time() + 120
    while True:
        try:
            output = late.get(timeout=0.1)
            break
        except TimeoutError:
            assert time.time() < deadline
    assert output["status"] == "ok"
    assert output["reused"] is True


def test_cancelling_an_executed_call_stops_its_container_process(tmp_path: Path) -> None:
    spec = run_spec_dict(tmp_path / "models")
    fake = FakeModal(tmp_path / "modal.json", outcome="execute", run_s=600)
    call = fake.spawn(spec, gpu="A10G", timeout_s=600)
    pid = int(fake.call(call.object_id)["pid"])
    call.cancel()
    deadline = time.time() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.time() < deadline, "the container process outlived its cancel"
        time.sleep(0.05)
    with pytest.raises(Exception, match="cancelled"):
        call.get(timeout=0.1)
