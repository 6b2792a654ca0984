"""The status page in a real headless browser (Playwright driving Debian's Chromium) after
a real run: C-STORE in, the tiny model, C-STORE out. The page lists the job and both
thumbnails load and show pixels. Skipped, with the reason, without Playwright or Chromium.

``RTFSYN_SCREENSHOT=PATH`` also keeps the screenshot at PATH (the docs' figure is made
by ``bench/status_run.py`` with the shipped model).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_node.http.screenshot import capture, chromium_path
from tests.e2e.data import write_t1_series
from tests.http.helpers import TOKEN
from tests.helpers.node import TestStorageSCP, send_files
from tests.reliability.helpers import series_uid_of

pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                    "(pip install -e '.[test]')")
if chromium_path() is None:
    pytest.skip("no Chromium browser (apt-get install chromium, or set RTFSYN_CHROMIUM)",
                allow_module_level=True)


def _box_pixels(png: Path, box: tuple[float, float, float, float]) -> np.ndarray:
    """The screenshot's grey pixels inside a box (CSS pixels; device scale 1)."""
    from PIL import Image

    x, y, w, h = (int(round(v)) for v in box)
    with Image.open(png) as image:
        return np.asarray(image.convert("L").crop((x, y, x + w, y + h)))


def test_status_page_shows_jobs_and_thumbnails(make_http_node: Any, pacs: TestStorageSCP,
                                               tmp_path: Path) -> None:
    node = make_http_node(dest_port=pacs.port, http={"token": TOKEN})
    files = write_t1_series(tmp_path / "t1")
    assert set(send_files(files, node.port)) == {0}
    job = node.wait_jobs_final(series_uid_of(files[0]))[0]
    assert job["state"] == "done", job
    shot = capture(node.url + "/", tmp_path / "status_page.png", token=TOKEN)
    assert shot.path.stat().st_size > 0
    thumbs = {src: (w, h, box) for src, w, h, box in shot.images}
    for kind in ("source", "derived"):
        src = f"thumbnails/{job['id']}/{kind}.png"
        assert src in thumbs, (src, list(thumbs))
        width, height, box = thumbs[src]
        assert width > 0 and height > 0, f"{kind} thumbnail did not load"
        pixels = _box_pixels(shot.path, box)
        # the box's background is black: the slice must light up a part of it
        assert (pixels > 20).mean() > 0.05 and pixels.std() > 5.0, (kind, pixels.std())
    if os.environ.get("RTFSYN_SCREENSHOT"):
        shutil.copy(shot.path, os.environ["RTFSYN_SCREENSHOT"])
