"""A screenshot of the status page in a real headless browser (Playwright driving the
system's Chromium; no browser is downloaded), with a check that its thumbnails loaded.

    shot = capture("http://127.0.0.1:8080/", Path("status.png"))
    shot.images  # [(src, naturalWidth, naturalHeight, (x, y, width, height)), ...]

Used by the browser test and by ``bench/status_run.py`` (the figure in
``docs/img/status_page.png``). Needs the ``playwright`` package (the ``[test]`` extra)
and a Chromium binary (Debian's ``chromium``: ``/usr/bin/chromium``).
"""
from __future__ import annotations

import base64
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Screenshot", "capture", "chromium_path"]

Box = tuple[float, float, float, float]  # x, y, width, height in CSS pixels of the page


@dataclass(frozen=True)
class Screenshot:
    """The PNG written and every ``<img>`` of the page: (src, natural width, natural
    height, box on the page); a natural width of 0 means the image did not load."""

    path: Path
    images: tuple[tuple[str, int, int, Box], ...]


def chromium_path() -> str | None:
    """The Chromium to drive: ``$RTFSYN_CHROMIUM``, else ``chromium`` on the PATH."""
    return os.environ.get("RTFSYN_CHROMIUM") or shutil.which("chromium")


def capture(url: str, out_path: Path, *, token: str | None = None, width: int = 1400,
            timeout_s: float = 60.0) -> Screenshot:
    """Open ``url``, wait until every image finished loading, write a full-page PNG."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium or set "
                                "RTFSYN_CHROMIUM)")
    headers = {}
    if token:  # as a browser sends it after the Basic prompt
        headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{token}".encode()
                                                               ).decode()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # --no-sandbox: Chromium refuses to run as root with its sandbox (CI runs as root).
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900},
                                    extra_http_headers=headers)
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            page.wait_for_function("Array.from(document.images).every(i => i.complete)",
                                   timeout=timeout_s * 1000)
            images = page.eval_on_selector_all("img", """els => els.map(e => {
                const r = e.getBoundingClientRect();
                return [e.getAttribute('src'), e.naturalWidth, e.naturalHeight,
                        [r.x + window.scrollX, r.y + window.scrollY, r.width, r.height]];
            })""")
            page.screenshot(path=str(out_path), full_page=True)
        finally:
            browser.close()
    return Screenshot(out_path, tuple((str(s), int(w), int(h), tuple(box))
                                      for s, w, h, box in images))
