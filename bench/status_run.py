"""A real run of the operations service, for docs/OPERATIONS.md: ``rtfsyn serve`` with
``[http]`` and the shipped model, a simulated T1 head sent by dcmtk ``storescu``, a dcmtk
``storescp`` as the PACS, ``/metrics`` scraped with ``curl`` before, during and after the
run, and a screenshot of the status page in headless Chromium.

    python bench/status_run.py                        # prints the curl excerpts
    python bench/status_run.py --screenshot docs/img/status_page.png

Two targets (T2, FLAIR) and one worker: while the first job synthesizes the second waits,
so the queue depth shows too. Takes a few minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bench.e2e import checkpoint_for, t1_series  # noqa: E402
from bench.peers import (LOOPBACK, DcmtkStoreSCP, ManagedProcess, dicom_echo,  # noqa: E402
                         free_port, storescu_args, dcmtk_env, wait_until)

# The lines of the excerpt: what moves during a run.
SHOWN = re.compile(r"^rtfsyn_(instances_received_total|associations_total\{outcome=\"released\""
                   r"|series\{state=\"(receiving|routed)\"|jobs\{|queue_depth|"
                   r"synthesis_seconds_(count|sum)|delivery_attempts_total)")


def node_toml(workdir: Path, *, port: int, http_port: int, pacs_port: int,
              checkpoint: str) -> Path:
    """The node's configuration: loopback, CPU, MR -> T2 and FLAIR -> the PACS, [http]."""
    text = f"""[node]
ae_title = "RTFSYN"
host = "{LOOPBACK}"
port = {port}
data_dir = {json.dumps(str(workdir / "data"))}
stable_seconds = 1

[model]
checkpoint = {json.dumps(checkpoint)}
device = "cpu"

[http]
host = "{LOOPBACK}"
port = {http_port}

[destinations.PACS]
ae_title = "PACS"
host = "{LOOPBACK}"
port = {pacs_port}

[[routes]]
name = "mr-to-pacs"
match = {{ Modality = "MR" }}
targets = ["T2", "FLAIR"]
destination = "PACS"
"""
    path = workdir / "node.toml"
    path.write_text(text)
    return path


def curl_metrics(http_port: int) -> list[str]:
    """``curl -s http://127.0.0.1:PORT/metrics``, the lines :data:`SHOWN` selects."""
    done = subprocess.run(["curl", "-s", f"http://{LOOPBACK}:{http_port}/metrics"],
                          capture_output=True, text=True, check=True, timeout=30)
    return [line for line in done.stdout.splitlines() if SHOWN.match(line)]


def _answers(http_port: int) -> bool:
    done = subprocess.run(["curl", "-sf", f"http://{LOOPBACK}:{http_port}/health"],
                          capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def _jobs_done(http_port: int, n: int) -> bool:
    lines = curl_metrics(http_port)
    return any(line.startswith('rtfsyn_jobs{state="done"') for line in lines) and \
        sum(float(line.split()[-1]) for line in lines
            if line.startswith('rtfsyn_jobs{state="done"')) >= n


def run(workdir: Path, screenshot: Path | None, slices: int) -> list[tuple[str, list[str]]]:
    """The run; returns (moment, curl excerpt) pairs."""
    files = t1_series(workdir / "cache", n_slices=slices, seed=3)
    pacs = DcmtkStoreSCP(workdir / "pacs", ae_title="PACS")
    pacs.start()
    port, http_port = free_port(), free_port()
    checkpoint, _why = checkpoint_for(workdir)
    config = node_toml(workdir, port=port, http_port=http_port, pacs_port=pacs.port,
                       checkpoint=checkpoint)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    node = ManagedProcess("rtfsyn serve", [sys.executable, "-m", "dicom_node.cli", "serve",
                                           "--config", str(config)], workdir / "node.log",
                          env=env)
    moments: list[tuple[str, list[str]]] = []
    try:
        node.start()
        wait_until(lambda: dicom_echo(port, "RTFSYN") and _answers(http_port) or None,
                   timeout_s=120, what="node C-ECHO and /health", alive=node.exited,
                   interval_s=0.3)
        moments.append(("before sending", curl_metrics(http_port)))
        subprocess.run(storescu_args(files, port, "RTFSYN", "WORKSTATION"), env=dcmtk_env(),
                       check=True, capture_output=True, timeout=300)
        moments.append((f"storescu sent {len(files)} instances", curl_metrics(http_port)))
        wait_until(lambda: any(line.startswith('rtfsyn_jobs{state="running"')
                               and not line.endswith(" 0.0")
                               for line in curl_metrics(http_port)) or None,
                   timeout_s=120, what="a job running", alive=node.exited, interval_s=0.5)
        moments.append(("first job synthesizing", curl_metrics(http_port)))
        wait_until(lambda: _jobs_done(http_port, 2) or None, timeout_s=1800,
                   what="both jobs done", alive=node.exited, interval_s=1.0)
        moments.append(("both jobs done", curl_metrics(http_port)))
        if screenshot is not None:
            from dicom_node.http.screenshot import capture

            shot = capture(f"http://{LOOPBACK}:{http_port}/", screenshot)
            loaded = [s for s, w, _h, _b in shot.images if w > 0]
            print(f"screenshot {shot.path}: {len(loaded)} of {len(shot.images)} images loaded")
    finally:
        node.stop(timeout_s=60)
        pacs.stop()
    return moments


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work folder (default: a new temporary one)")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="write the status page's screenshot here")
    parser.add_argument("--slices", type=int, default=64, help="axial 1 mm slices (default 64)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rtfsyn-status-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for moment, lines in run(workdir, args.screenshot, args.slices):
        print(f"\n# {moment}\n$ curl -s localhost:PORT/metrics | grep ...")
        print("\n".join(lines))
    print(f"\n(run took {time.monotonic() - started:.0f} s; work folder {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
