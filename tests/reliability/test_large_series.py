"""A very large series (1000 slices of 512 x 512) sent with dcmtk ``storescu`` in one
association to an ``rtfsyn serve`` process: every instance is spooled and recorded, and the
node's memory stays bounded (data streamed to disk, not held): its peak RSS grows by far less
than the series' size."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.helpers.harness import STORESCU_BIN, dcmtk_env, require
from tests.reliability.figures import input_tried, instances, measure
from tests.reliability.helpers import echo_ok, small_series
from tests.reliability.process import ProcNode, peak_rss_mb

N_SLICES, SIZE = 1000, 512
GROWTH_LIMIT_MB = 250.0  # the series is 500 MiB of pixel data


def _write_large_series(folder: Path) -> list[Path]:
    """1000 slices of 512 x 512 uint16, from one template (fast to write)."""
    template = small_series(folder / "template", n_slices=1, size=8)[0]
    ds = dcmread(template)
    ds.Rows = ds.Columns = SIZE
    ds.PixelData = np.random.default_rng(0).integers(0, 4000, (SIZE, SIZE), np.uint16).tobytes()
    ds.SeriesInstanceUID = generate_uid()
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    paths = []
    for k in range(N_SLICES):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{x:g}", f"{y:g}", f"{z + k:g}"]
        path = folder / f"s{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_1000_slices_of_512x512_streamed_to_disk(tmp_path: Path,
                                                 tiny_checkpoint: Path) -> None:
    require(STORESCU_BIN)
    files = _write_large_series(tmp_path / "large")
    node = ProcNode(tmp_path / "node", tiny_checkpoint,
                    node={"allowed_calling_aets": ["STORESCU", "ECHOSCU", "SCU"]})
    node.start()
    try:
        baseline = peak_rss_mb(node.pid)
        started = time.monotonic()
        done = subprocess.run([str(STORESCU_BIN), "--aetitle", "STORESCU", "--call", "RTFSYN",
                               "127.0.0.1", str(node.port), *map(str, files)],
                              env=dcmtk_env(), capture_output=True, text=True, timeout=600,
                              check=False)
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-2000:]
        peak = peak_rss_mb(node.pid)
        assert echo_ok(node.port)
        report = node.status()
        series = report["series"][0]
        assert report["instances"]["total"] == N_SLICES and series["n_instances"] == N_SLICES
        spooled = list((Path(node.settings["node"]["data_dir"]) / "spool").rglob("*.dcm"))
        assert len(spooled) == N_SLICES
        assert peak - baseline < GROWTH_LIMIT_MB, f"RSS {baseline:.0f} -> {peak:.0f} MiB"
    finally:
        node.stop()
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    instances(N_SLICES, report["instances"]["total"])
    input_tried("very large series (1000 x 512 x 512)", f"all {N_SLICES} spooled; "
                f"RSS +{peak - baseline:.0f} MiB for {size_mb:.0f} MiB")
    measure("large series receive", f"{size_mb:.0f} MiB in {seconds:.1f} s; node peak RSS "
            f"{baseline:.0f} -> {peak:.0f} MiB")
