"""The whole node with a fake processor: quiet period, routes, delivery, caller
destination, loop guard, recovery after a crash, and ``rtfsyn status``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from tests.helpers.node import (TestStorageSCP, fake_processor, make_ct_file, node_settings,
                                send_files, wait_for, write_config)
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.store.db import AssociationState, JobState, SeriesState
from dicom_node.store.jobqueue import JobQueue
from dicom_node.store.joblog import InstanceRecord, JobLog
from dicom_node.schedule.scheduler import Scheduler
from dicom_node.node import Node


class Setup:
    """A node routing MR series to a running test PACS (or back to the caller)."""

    def __init__(self, tmp_path: Path, pacs: TestStorageSCP, *, destination: str = "PACS",
                 stable_seconds: float = 0.5) -> None:
        self.calls: list = []
        self.settings = node_settings(
            tmp_path, node={"stable_seconds": stable_seconds},
            destinations={"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1",
                                   "port": pacs.port}},
            callers={"SCU": {"port": pacs.port}},
            routes=[{"name": "mr", "match": {"Modality": "MR"}, "targets": ["T2", "FLAIR"],
                     "destination": destination}])
        self.config_path = write_config(self.settings, tmp_path / "node.toml")
        self.config = load_config(self.config_path)
        self.node = Node(self.config, processor=fake_processor(self.calls))

    def rows(self, model: Any) -> list[Any]:
        with self.node.log.session() as s:
            return list(s.scalars(select(model).order_by(model.id)))

    def jobs_in(self, *states: JobState) -> bool:
        jobs = self.rows(db.Job)
        return bool(jobs) and all(j.state in states for j in jobs)


@pytest.fixture
def setup(tmp_path: Path, pacs: TestStorageSCP) -> Iterator[Setup]:
    s = Setup(tmp_path, pacs)
    with s.node:
        yield s


def _status(config_path: Path, capsys: pytest.CaptureFixture) -> dict[str, Any]:
    assert main(["status", "--config", str(config_path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_series_is_synthesized_per_target_and_delivered(
        setup: Setup, pacs: TestStorageSCP, mr_series: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    send_files([*mr_series, make_ct_file(tmp_path / "ct")], setup.node.address[1])
    settled = {SeriesState.ROUTED, SeriesState.IGNORED, SeriesState.NOT_ELIGIBLE}
    # the CT arrives last, so its quiet period may end after the MR's jobs are done
    wait_for(lambda: setup.jobs_in(JobState.DONE) and len(setup.rows(db.Series)) == 2
             and all(s.state in settled for s in setup.rows(db.Series)), what="both jobs done, both series settled")
    assert sorted(j.target for j in setup.calls) == ["FLAIR", "T2"]
    assert pacs.count == 2 * len(mr_series)
    series = {s.modality: s for s in setup.rows(db.Series)}
    mr = series["MR"]
    assert mr.state == SeriesState.ROUTED and mr.routes_applied == "mr"
    assert (mr.completed_at - mr.last_received_at).total_seconds() >= 0.5  # the quiet period
    assert series["CT"].state == SeriesState.NOT_ELIGIBLE
    assert series["CT"].reason == "no eligible instance (SOP class not eligible)"
    report = _status(setup.config_path, capsys)
    assert {j["state"] for j in report["jobs"]} == {"done"}
    assert {(j["target"], j["destination"]) for j in report["jobs"]} == {("T2", "PACS"),
                                                                       ("FLAIR", "PACS")}
    assert all(j["n_derived"] == len(mr_series) for j in report["jobs"])
    assert {s["state"] for s in report["series"]} == {"routed", "not_eligible"}
    assert report["associations"]["by_state"] == {"released": 1}
    assert report["instances"]["not_eligible"] == 1
    assert {d["status"] for d in report["deliveries"]} == {"ok"}
    text = json.dumps(report)
    assert "FACTORY^TEST" not in text and "FAC0001" not in text and "CT^PATIENT" not in text
    assert main(["status", "--config", str(setup.config_path)]) == 0
    table = capsys.readouterr().out
    assert "JOBS" in table and "DELIVERIES" in table and "done" in table


def test_caller_destination_sends_back_to_the_calling_ae(tmp_path: Path, pacs: TestStorageSCP,
                                                         mr_series: list[Path]) -> None:
    s = Setup(tmp_path, pacs, destination="caller")
    with s.node:
        send_files(mr_series, s.node.address[1], calling="SCU")
        wait_for(lambda: s.jobs_in(JobState.DONE), what="jobs done")
    job = s.rows(db.Job)[0]
    assert (job.destination, job.dest_ae_title, job.dest_host) == ("caller", "SCU", "127.0.0.1")
    assert pacs.count == 2 * len(mr_series)


def test_derived_series_sent_back_is_stopped_by_the_loop_guard(
        setup: Setup, pacs: TestStorageSCP, mr_series: list[Path], tmp_path: Path) -> None:
    send_files(mr_series, setup.node.address[1])
    wait_for(lambda: setup.jobs_in(JobState.DONE), what="jobs done")
    echoed = tmp_path / "echo"
    echoed.mkdir()
    for i, ds in enumerate(pacs.datasets):
        ds.save_as(echoed / f"{i}.dcm", enforce_file_format=True)
    send_files(sorted(echoed.iterdir()), setup.node.address[1])
    wait_for(lambda: len([s for s in setup.rows(db.Series)
                          if s.state == SeriesState.NOT_ELIGIBLE]) == 2, what="loop guard")
    reasons = {s.reason for s in setup.rows(db.Series) if s.state == SeriesState.NOT_ELIGIBLE}
    assert all(r.startswith("loop guard") for r in reasons)
    assert len(setup.rows(db.Job)) == 2


def _record_released_series(log: JobLog, files: list[Path]) -> None:
    """Log a fully received series as a crashed node would have left it."""
    from pydicom import dcmread

    assoc = log.open_association("SCU", "RTFSYN", "127.0.0.1", 5000)
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        log.record_instance(InstanceRecord(
            str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID),
            str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), f, f.stat().st_size, assoc,
            True, modality="MR"))
    log.end_association(assoc, AssociationState.RELEASED)


def test_restart_processes_interrupted_work_exactly_once(tmp_path: Path, pacs: TestStorageSCP,
                                                         mr_series: list[Path]) -> None:
    s = Setup(tmp_path, pacs, stable_seconds=0.05)
    log = JobLog(s.config.database_path)
    _record_released_series(log, mr_series)
    crashed = Scheduler(s.config, log, fake_processor())
    wait_for(lambda: crashed.tick(), what="series routed")
    queue = JobQueue(log)
    interrupted = queue.claim_next()  # the "crash" happens while this job is synthesized
    crashed.job_dir(interrupted.id).mkdir(parents=True)
    (crashed.job_dir(interrupted.id) / "partial.dcm").write_bytes(b"half a file")
    assoc = log.open_association("SCU", "RTFSYN", "127.0.0.1", 5001)  # cut off mid-transfer
    with s.node:
        assert s.node.recovery.jobs_requeued == 1 and s.node.recovery.associations_aborted == 1
        wait_for(lambda: s.jobs_in(JobState.DONE), what="jobs done after restart")
    assert sorted(j.target for j in s.calls) == ["FLAIR", "T2"]  # each exactly once
    job = next(j for j in s.rows(db.Job) if j.id == interrupted.id)
    assert job.derived_series_uid == interrupted.derived_series_uid and job.attempts == 2
    assert not (crashed.job_dir(job.id) / "partial.dcm").exists()
    assert pacs.count == 2 * len(mr_series)
    with log.session() as session:
        assert session.get(db.Association, assoc).state == AssociationState.ABORTED


def test_stop_is_clean_and_idempotent(tmp_path: Path, pacs: TestStorageSCP) -> None:
    s = Setup(tmp_path, pacs)
    s.node.start()
    port = s.node.address[1]
    s.node.stop()
    s.node.stop()
    assert s.node.wait(0) is True
    with pytest.raises(ConnectionRefusedError):
        send_files([], port)
    assert not [t for t in s.node.scheduler._threads if t.is_alive()]


def test_cli_reports_configuration_and_missing_job_log_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 0\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "node.port must be an integer port in 1..65535. Found 0" in capsys.readouterr().err
    fresh = write_config(node_settings(tmp_path / "fresh"), tmp_path / "fresh.toml")
    assert main(["status", "--config", str(fresh)]) == 2
    assert "no job log at" in capsys.readouterr().err
    assert main(["resend", "--failed", "--config", str(bad)]) == 2


def test_warm_up_says_when_it_is_done(caplog: pytest.LogCaptureFixture) -> None:
    """The start-up warm-up ends with the line that benchmarks wait for (bench/peers.py)."""
    from dicom_node.process.processor import WARM_UP_DONE, SynthesisProcessor

    with caplog.at_level("INFO", logger="dicom_node.process.processor"):
        SynthesisProcessor(config=None).warm_up()  # type: ignore[arg-type]
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith(WARM_UP_DONE)]
    assert len(done) == 1 and done[0].endswith(" s")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_model_settings_reach_the_synthesizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``[model] bias_correction`` (with checkpoint and device) is what the shared
    Synthesizer is built with."""
    import synthesis.inference
    from dicom_node.config import parse_config
    from dicom_node.process.processor import SynthesisProcessor

    built: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(synthesis.inference, "Synthesizer",
                        lambda *args, **kwargs: built.append((args, kwargs)) or "model")
    config = parse_config({"model": {"device": "cpu", "bias_correction": True}})
    processor = SynthesisProcessor(config)
    assert processor.synthesizer == "model" and processor.synthesizer == "model"
    assert built == [(("default", "cpu"), {"bias_correction": True})]
