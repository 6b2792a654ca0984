"""How long work shows itself on a terminal: numbered stages and tqdm bars.

:class:`ProgressView` gives :func:`dicom_node.process.pipeline.process_series` its
``stage`` and ``progress`` callbacks: each stage prints one line
(``[3/4] synthesis ...``) and the synthesis phases (encoded tiles, decoded
chunks) draw a bar each, on stderr. Log lines written meanwhile go through
``tqdm.write`` (:func:`dicom_node.cli.main` wraps long commands in
``tqdm.contrib.logging.logging_redirect_tqdm``), so they never break a bar.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence, TextIO

__all__ = ["ProgressView", "PIPELINE_STAGES"]

PIPELINE_STAGES = {
    "assembly": "reading the series and assembling the volume",
    "conditioning": "checking eligibility and reading the protocol from the tags",
    "synthesis": "synthesizing with RTFSyn",
    "encoding": "writing and verifying the derived DICOM series",
}
_PHASES = {"encode": ("encode", "tile"), "decode": ("decode", "chunk")}


class ProgressView:
    """Stage lines and per-phase bars; ``stages``: the names in order (for ``[k/n]``)."""

    def __init__(self, stages: Sequence[str] = tuple(PIPELINE_STAGES), *,
                 descriptions: dict[str, str] | None = None, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.stages = list(stages)
        self.descriptions = {**PIPELINE_STAGES, **(descriptions or {})}
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def stage(self, name: str) -> None:
        """Announce stage ``name`` (closes the bars of the previous one)."""
        from tqdm import tqdm

        self.close()
        if not self.enabled:
            return
        where = f"[{self.stages.index(name) + 1}/{len(self.stages)}] " \
            if name in self.stages else ""
        tqdm.write(f"{where}{self.descriptions.get(name, name)}", file=self.stream)

    def progress(self, phase: str, done: int, total: int) -> None:
        """Advance the bar of ``phase`` to ``done`` of ``total``."""
        from tqdm import tqdm

        if not self.enabled:
            return
        bar = self._bars.get(phase)
        if bar is None:
            desc, unit = _PHASES.get(phase, (phase, "step"))
            bar = self._bars[phase] = tqdm(total=total, desc=f"    {desc}", unit=unit,
                                           file=self.stream, leave=True)
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        """Finish every open bar."""
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
