"""``rtfsyn status`` as an administrator uses it: a destination down, a job waiting with its
next attempt, the last error in full, a rejected association with its address and reason,
filters, JSON with the same content, and the console's one-line refusal notices."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.errors import REFUSALS_LOGGER
from dicom_node.node import Node
from dicom_node.store import db
from dicom_node.store.db import JobState
from tests.helpers.node import (fake_processor, free_port, node_settings, send_files, wait_for,
                                write_config)


class DownDestination:
    """A node whose only destination is not listening; calling AE 'SCU' allowed only."""

    def __init__(self, tmp_path: Path) -> None:
        self.pacs_port = free_port()
        settings = node_settings(
            tmp_path, node={"allowed_calling_aets": ["SCU"], "data_dir": "var"},
            export={"backoff_seconds": 30, "backoff_max_seconds": 60,
                    "retry_window_hours": 24},
            destinations={"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1",
                                   "port": self.pacs_port}},
            routes=[{"name": "mr", "match": {"Modality": "MR"}, "targets": ["T2"],
                     "destination": "PACS"}])
        del settings["export"]["max_attempts"]
        self.config_path = write_config(settings, tmp_path / "etc" / "node.toml")
        self.node = Node(load_config(self.config_path), processor=fake_processor())

    def job(self) -> Any:
        with self.node.log.session() as s:
            return s.scalar(select(db.Job))


@pytest.fixture
def down(tmp_path: Path, mr_series: list[Path], caplog: pytest.LogCaptureFixture
         ) -> Iterator[DownDestination]:
    (tmp_path / "etc").mkdir()
    setup = DownDestination(tmp_path)
    with caplog.at_level(logging.WARNING, logger=REFUSALS_LOGGER), setup.node:
        send_files(mr_series, setup.node.address[1])
        with pytest.raises(ConnectionRefusedError):
            send_files(mr_series, setup.node.address[1], calling="INTRUDER")
        wait_for(lambda: setup.job() is not None and setup.job().state == JobState.WAITING,
                 what="job waiting for the destination")
        yield setup


def _status(config: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["status", "--config", str(config), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_status_answers_the_administrator(down: DownDestination, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir("/")  # anywhere: data_dir is relative to the configuration file
    code, text, _err = _status(down.config_path, capsys)
    assert code == 0
    job = down.job()
    last_error = (f"association with TESTPACS@127.0.0.1:{down.pacs_port} aborted or "
                  "unreachable (ConnectionRefusedError)")
    assert "1 waiting for destination" in text
    assert f"PACS (TESTPACS@127.0.0.1:{down.pacs_port}): failing" in text
    assert f"last error: {last_error}" in text  # in full, not cut
    assert f"#{job.id}" in text and "waiting" in text and "next attempt" in text
    assert "t1_mprage_sag" in text and "[T1w]" in text  # description, source contrast
    assert "calling 'INTRUDER'" in text and "from 127.0.0.1:" in text
    assert "FACTORY" not in text and "FAC0001" not in text  # no patient name or ID


def test_json_carries_the_same(down: DownDestination, capsys: pytest.CaptureFixture) -> None:
    code, out, _err = _status(down.config_path, capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["queue"]["waiting"] == 1 and report["queue"]["depth"] == 1
    [dest] = report["destinations"]
    assert (dest["destination"], dest["health"], dest["jobs_waiting"]) == ("PACS", "failing", 1)
    [series] = report["series"]
    assert series["source_contrast"] == "T1w" and series["description"] == "t1_mprage_sag"
    assert series["first_received_at"].endswith("Z") and series["state"] == "routed"
    [job] = report["jobs"]
    assert job["state"] == "waiting" and job["next_attempt_at"] and job["retry_until"]
    assert "ConnectionRefusedError" in job["last_error"] and job["duration_seconds"] >= 0
    [rejected] = report["associations"]["rejected"]
    assert rejected["calling_aet"] == "INTRUDER" and rejected["peer_host"] == "127.0.0.1"
    assert "calling AE" in rejected["reason"] and rejected["started_at"]


def test_filters(down: DownDestination, capsys: pytest.CaptureFixture) -> None:
    def jobs(*args: str) -> list[int]:
        code, out, _err = _status(down.config_path, capsys, "--json", *args)
        assert code == 0
        return [j["id"] for j in json.loads(out)["jobs"]]

    job_id, series_uid = down.job().id, down.job().series_uid
    assert jobs("--state", "waiting") == [job_id] == jobs("--state", "done,waiting")
    assert jobs("--state", "done") == []
    assert jobs("--series", series_uid[:12]) == [job_id] and jobs("--series", "9.9.9") == []
    assert jobs("--since", "1h") == [job_id]
    code, out, _err = _status(down.config_path, capsys, "--json", "--since", "2099-01-01")
    assert json.loads(out)["series"] == [] and json.loads(out)["associations"]["rejected"] == []
    code, _out, err = _status(down.config_path, capsys, "--state", "sleeping")
    assert code == 2 and "unknown state(s) sleeping; known:" in err


def test_refusals_are_one_line_on_the_console(down: DownDestination,
                                              caplog: pytest.LogCaptureFixture) -> None:
    lines = [r.getMessage() for r in caplog.get_records("setup") if r.name == REFUSALS_LOGGER]
    [line] = lines
    assert line.startswith("REFUSED association from 127.0.0.1:") and "INTRUDER" in line
    assert "\n" not in line and "FACTORY" not in line


def test_resend_retries_a_waiting_job_now(down: DownDestination,
                                          capsys: pytest.CaptureFixture) -> None:
    before = down.job().next_attempt_at
    assert main(["resend", "--waiting", "--config", str(down.config_path)]) == 0
    assert f"job {down.job().id}: sending" in capsys.readouterr().out
    wait_for(lambda: len(_deliveries(down)) >= 2, what="a second attempt at once")
    assert _deliveries(down)[1].started_at < before  # not after the 30 s backoff


def _deliveries(down: DownDestination) -> list[Any]:
    with down.node.log.session() as s:
        return list(s.scalars(select(db.Delivery).order_by(db.Delivery.id)))
