"""Scale-out on PostgreSQL with real processes: one receiver and two workers (``rtfsyn
serve`` children sharing a job log on a PostgreSQL server of the test's own and one spool
folder), several series sent, one worker SIGKILLed while it synthesizes. Every series is
processed and delivered exactly once: jobs are claimed by both workers and by none twice,
and the killed worker's job is taken over by the other once its lease expires. The worker
is killed while it synthesizes and sends nothing (a delivery cut off mid-send is retried in
full: tests/store/test_shared_queue.py covers that takeover)."""
from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path
from typing import Any

from dicom_node.store.status import build_report
from tests.helpers.node import TestStorageSCP, send_files
from tests.helpers.peers import wait_until
from tests.helpers.scaleout import ScaleOut
from tests.reliability.helpers import received_by, small_series

N_SERIES = 5
SHAPE = dict(n_slices=24, size=64)  # about 2 s of synthesis per job with the tiny model
LEASE_SECONDS = 8.0  # heartbeat every 2.7 s: enough slack on a loaded 2-core machine


def _job_to_kill(nodes: ScaleOut, workers: dict[str, str], *, recent_only: bool = True
                 ) -> tuple[int, str] | None:
    """(job id, worker name) of a job that a worker which already finished a job is
    synthesizing (``recent_only``: started less than a second ago, so that it is still
    mid-synthesis when killed)."""
    done_by = {p for p, in nodes.query("SELECT processed_by FROM jobs "
                                       "WHERE processed_by IS NOT NULL")}
    recent = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=1)
    if not recent_only:
        recent = dt.datetime(1970, 1, 1)
    for job_id, claimed_by in nodes.query(
            "SELECT id, claimed_by FROM jobs WHERE state = 'running' AND started_at > :recent",
            recent=recent):
        if claimed_by in done_by:
            return job_id, next(n for n, i in workers.items() if i == claimed_by)
    return None


def _pause_mid_synthesis(nodes: ScaleOut, workers: dict[str, str]) -> tuple[int, str] | None:
    """Like :func:`_job_to_kill`, with the worker SIGSTOPped and not delivering: its sender
    may be sending its first job meanwhile, and a series cut off mid-send is sent again in
    full by the other worker (the same instances twice at the destination). Stopped, the
    worker cannot begin a delivery between this check and the SIGKILL; one that is
    delivering is continued (SIGCONT) and None returned, to try again."""
    found = _job_to_kill(nodes, workers, recent_only=False)  # the SIGSTOP check below confirms it
    if found is None:
        return None
    job_id, name = found
    os.kill(nodes.processes[name].pid, signal.SIGSTOP)
    sending = nodes.query("SELECT count(*) FROM deliveries WHERE status = 'running' "
                          "AND sender = :node", node=workers[name])
    running = nodes.query("SELECT state, claimed_by FROM jobs WHERE id = :id", id=job_id)
    if sending == [(0,)] and running == [("running", workers[name])]:
        return found
    os.kill(nodes.processes[name].pid, signal.SIGCONT)
    return None


def _jobs(url: str) -> list[dict[str, Any]]:
    return build_report(url)["jobs"]


def test_two_workers_share_the_queue_and_take_over_a_killed_workers_job(
        tmp_path: Path, pg_url: str, tiny_checkpoint: Path) -> None:
    pacs = TestStorageSCP().start()
    nodes = ScaleOut(tmp_path, pg_url, tiny_checkpoint, pacs.port, lease_seconds=LEASE_SECONDS)
    try:
        port = nodes.start_receiver()
        workers = {name: nodes.start_worker(name) for name in ("worker-1", "worker-2")}
        sources = [small_series(tmp_path / f"series-{i}", seed=i, **SHAPE)
                   for i in range(N_SERIES)]
        for files in sources:
            assert set(send_files(files, port)) == {0}
        job_id, victim = wait_until(lambda: _pause_mid_synthesis(nodes, workers),
                                    timeout_s=300, interval_s=0.05,
                                    what="a worker's second job mid-synthesis, none sending")
        nodes.kill(victim)
        survivor = next(n for n in workers if n != victim)
        state = nodes.query("SELECT state, claimed_by, attempts, processed_by FROM jobs "
                            "WHERE id = :id", id=job_id)
        assert state == [("running", workers[victim], 1, None)], "killed mid-synthesis"
        jobs = wait_until(lambda: (j := _jobs(pg_url)) and len(j) == N_SERIES
                          and all(x["state"] in ("done", "failed", "rejected") for x in j) and j,
                          timeout_s=300, what=f"{N_SERIES} final jobs", interval_s=0.5,
                          alive=nodes.processes[survivor].exited)
        report = build_report(pg_url)
    finally:
        codes = nodes.stop_all()
        pacs.stop()
    assert [j["state"] for j in jobs] == ["done"] * N_SERIES, jobs
    by_worker = {name: sorted(j["id"] for j in jobs if j["processed_by"] == node_id)
                 for name, node_id in workers.items()}
    assert all(by_worker.values()), f"both workers must process jobs. Found {by_worker}"
    taken_over = next(j for j in jobs if j["id"] == job_id)
    assert (taken_over["attempts"], taken_over["processed_by"]) == (2, workers[survivor])
    assert sorted(j["attempts"] for j in jobs if j["id"] != job_id) == [1] * (N_SERIES - 1)
    deliveries = report["deliveries"]
    assert sorted(d["job_id"] for d in deliveries) == sorted(j["id"] for j in jobs), \
        "one delivery per job, none twice"
    assert {d["status"] for d in deliveries} == {"ok"}
    for job in jobs:
        n = job["n_derived"]
        assert n > 0 and received_by(pacs, job["derived_series_uid"]) == (n, n), job
    assert pacs.count == sum(j["n_derived"] for j in jobs)  # nothing else, nothing twice
    assert codes["receiver"] == 0 and codes[survivor] == 0
    print(f"\nPostgreSQL scale-out: {N_SERIES} series, 1 receiver + 2 workers; jobs processed "
          f"by {by_worker}; {victim} SIGKILLed during job {job_id} (attempt 1), finished by "
          f"{survivor} (attempt 2) after the {LEASE_SECONDS:g} s lease; {len(deliveries)} "
          f"deliveries, {pacs.count} instances at the destination, each once")
