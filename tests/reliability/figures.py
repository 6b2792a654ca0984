"""The figures the reliability suite measured, printed at the end of the run.

Tests call :func:`input_tried`, :func:`fault_survived`, :func:`instances` and
:func:`measure`; ``conftest.pytest_terminal_summary`` prints :func:`summary_lines`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["FIGURES", "FuzzClass", "input_tried", "fault_survived", "instances", "delivered",
           "measure", "fuzz_class", "summary_lines", "fuzz_lines"]


@dataclass(frozen=True)
class FuzzClass:
    """What one fuzz class did to one receiver: cases sent, crashes (the receiver stopped
    answering or a thread died), hangs (a case got no answer and no close in time), and the
    process after it (resident memory, MiB; threads; files left in the temporary area)."""

    cases: int
    crashes: int
    hangs: int
    rss_mib: float
    threads: int
    temp_files: int
    note: str = ""


@dataclass
class Figures:
    """Counters shared by every test of one pytest session."""

    inputs: dict[str, str] = field(default_factory=dict)  # case -> outcome
    faults: dict[str, str] = field(default_factory=dict)  # fault -> outcome
    sent: int = 0
    accounted: int = 0
    series_delivered: int = 0
    derived_delivered: int = 0
    measures: dict[str, str] = field(default_factory=dict)
    fuzz: dict[tuple[str, str], FuzzClass] = field(default_factory=dict)  # (receiver, class)
    lock: threading.Lock = field(default_factory=threading.Lock)


FIGURES = Figures()


def input_tried(case: str, outcome: str) -> None:
    """A bad (or unusual) input was sent and the node answered ``outcome``."""
    with FIGURES.lock:
        FIGURES.inputs[case] = outcome


def fault_survived(fault: str, outcome: str) -> None:
    """A fault was injected and the node recovered (``outcome`` says how)."""
    with FIGURES.lock:
        FIGURES.faults[fault] = outcome


def instances(sent: int, accounted: int) -> None:
    """``sent`` instances went to the node; ``accounted`` of them are in its job log."""
    with FIGURES.lock:
        FIGURES.sent += sent
        FIGURES.accounted += accounted


def delivered(series: int, derived_instances: int) -> None:
    """``series`` derived series (``derived_instances`` instances) reached a destination."""
    with FIGURES.lock:
        FIGURES.series_delivered += series
        FIGURES.derived_delivered += derived_instances


def measure(name: str, value: str) -> None:
    """Any other measured figure (peak RSS, wall time, ...)."""
    with FIGURES.lock:
        FIGURES.measures[name] = value


def fuzz_class(receiver: str, name: str, result: FuzzClass) -> None:
    """A fuzz class ran against ``receiver`` (``native`` or ``pynetdicom``)."""
    with FIGURES.lock:
        FIGURES.fuzz[(receiver, name)] = result


def fuzz_lines() -> list[str]:
    """The fuzz classes as a table (empty when none ran)."""
    if not FIGURES.fuzz:
        return []
    lines = [f"{'receiver':<10} {'class':<28} {'cases':>6} {'crashes':>7} {'hangs':>5} "
             f"{'RSS after':>10} {'threads':>7} {'temp files':>10}  note"]
    for (receiver, name), r in sorted(FIGURES.fuzz.items()):
        lines.append(f"{receiver:<10} {name:<28} {r.cases:>6} {r.crashes:>7} {r.hangs:>5} "
                     f"{r.rss_mib:>6.0f} MiB {r.threads:>7} {r.temp_files:>10}  {r.note}")
    return lines


def summary_lines() -> list[str]:
    """The figures as a small table (empty when no reliability test ran)."""
    f = FIGURES
    if not (f.inputs or f.faults or f.sent or f.measures):
        return []
    lines = [f"inputs tried: {len(f.inputs)}"]
    lines += [f"  {case:<44} {outcome}" for case, outcome in sorted(f.inputs.items())]
    lines.append(f"faults survived: {len(f.faults)}")
    lines += [f"  {fault:<44} {outcome}" for fault, outcome in sorted(f.faults.items())]
    lines.append(f"instances sent vs accounted in the job log: {f.sent} / {f.accounted}")
    lines.append(f"derived series delivered: {f.series_delivered} "
                 f"({f.derived_delivered} instances)")
    lines += [f"{name}: {value}" for name, value in sorted(f.measures.items())]
    return lines
