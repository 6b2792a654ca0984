"""No patient name, ID or birth date in anything the status service serves, after a run
whose series carry sentinel patient values (a delivered one, a rejected one, and a
refused association), as the reliability suite's security test checks the logs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.http.helpers import leaks, with_sentinels
from tests.helpers.node import TestStorageSCP, send_files
from tests.reliability.helpers import series_uid_of, small_series


def test_no_patient_data_in_pages_api_or_metrics(make_http_node: Any, pacs: TestStorageSCP,
                                                 tmp_path: Path) -> None:
    node = make_http_node(dest_port=pacs.port, node={"allowed_calling_aets": ["SCU"]},
                          export={"max_attempts": 1})
    good = small_series(tmp_path / "good", mutate=with_sentinels)
    bad = small_series(tmp_path / "bad", n_slices=1, seed=1, mutate=with_sentinels)
    assert set(send_files(good + bad, node.port)) == {0}
    with pytest.raises(ConnectionRefusedError):
        send_files(good[:1], node.port, calling="INTRUDER")
    jobs = [j for files in (good, bad) for j in node.wait_jobs_final(series_uid_of(files[0]))]
    assert sorted(j["state"] for j in jobs) == ["done", "rejected"], jobs
    assert any(str(ds.PatientID) == "PID-SENTINEL-913" for ds in pacs.datasets), \
        "the derived series carries the patient (so the search below is meaningful)"
    texts = {}
    for path in ("/", "/api/status", "/api/series", "/api/jobs", "/metrics", "/ready",
                 "/health", "/api/jobs?state=rejected"):
        status, headers, body = node.get(path)
        assert status == 200, path
        texts[path] = body.decode() + str(headers)
    assert "rejected" in texts["/"] and "done" in texts["/"], "the page shows the run"
    assert leaks(texts) == {}, "patient data served"
