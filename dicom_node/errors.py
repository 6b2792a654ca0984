"""Exceptions shared by the DICOM side of the node."""
from __future__ import annotations

import logging

__all__ = ["RejectedSeries", "DerivedSeriesError", "refused", "REFUSALS_LOGGER"]

REFUSALS_LOGGER = "rtfsyn.refused"  # one line per refusal, shown on the console of `serve`
_refusals = logging.getLogger(REFUSALS_LOGGER)


def refused(summary: str) -> None:
    """Announce, in one line, what the node refused and why (an association, a series, a
    job). ``summary`` names AE titles, addresses, UIDs and rules, never patient data."""
    _refusals.warning("REFUSED %s", summary.replace("\n", " "))


class RejectedSeries(Exception):
    """A series the node will not process.

    ``reason`` is patient-free text that names the rule that failed and the
    value found, e.g. ``"irregular slice spacing: gaps range 2.0-3.5 mm
    (tolerance 0.1 mm)"``. It goes to the job log and to the CLI as is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class DerivedSeriesError(RuntimeError):
    """A derived series could not be written or did not read back as written.

    The message names the file (by its name in the output folder) and the
    check that failed; it never holds patient data.
    """
