"""Fixtures of the network suite (fuzzing, PS3.8 conformance, interoperability) and the table
of what the fuzzer tried, printed at the end of the run (:mod:`tests.reliability.figures`)."""
from __future__ import annotations

from typing import Any

from tests.reliability.figures import fuzz_lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print, per fuzz class and receiver: cases tried, crashes, hangs, memory after."""
    lines = fuzz_lines()
    if not lines:
        return
    terminalreporter.section("network fuzz figures")
    for line in lines:
        terminalreporter.write_line(line)
