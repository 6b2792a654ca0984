"""The disk guard: is the file system of the data folder at or above the watermark
(``[node] disk_watermark_percent``)? Read by both receivers (new associations rejected, data
sets refused with *out of resources* while they stream) and by the HTTP readiness check."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["DiskGuard"]


class DiskGuard:
    """Is the file system holding ``path`` at or above ``watermark_percent`` used?

    ``usage`` returns ``(total, used, free)`` bytes (default
    :func:`shutil.disk_usage`); the answer is cached for ``cache_seconds``.
    """

    def __init__(self, path: Path, watermark_percent: float, *,
                 usage: Callable[[Path], Any] = shutil.disk_usage,
                 cache_seconds: float = 1.0) -> None:
        self.path, self.watermark = Path(path), float(watermark_percent)
        self._usage, self._cache_seconds = usage, cache_seconds
        self._checked, self._total, self._used = -1e9, 0, 0
        self._lock = threading.Lock()

    def _sizes(self) -> tuple[int, int]:
        """(total, used) bytes of the file system (cached)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self._cache_seconds:
                self._total, self._used = (int(v) for v in self._usage(self.path)[:2])
                self._checked = now
            return self._total, self._used

    def percent_used(self) -> float:
        """Used space of the file system, percent (cached)."""
        total, used = self._sizes()
        return 100.0 * used / total if total else 100.0

    def is_short(self) -> bool:
        """True when new data must be refused."""
        return self.percent_used() >= self.watermark

    def room(self, n_bytes: int) -> bool:
        """May ``n_bytes`` more be written without reaching the watermark?"""
        total, used = self._sizes()
        return bool(total) and 100.0 * (used + n_bytes) / total < self.watermark
