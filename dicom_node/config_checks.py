"""Value checkers for the configuration: each names the key, the rule and the value found."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ConfigError", "check_ae_title", "check_port", "check_number", "check_integer",
           "check_string", "check_bool", "check_table", "check_no_unknown", "check_path"]

_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # DICOM AE: printable, no backslash


class ConfigError(ValueError):
    """The configuration breaks a rule; the message names the key and the value found."""


def check_ae_title(key: str, value: Any) -> str:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash (stripped)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string. Found {value!r}.")
    title = value.strip()
    if len(title) > 16:
        raise ConfigError(f"{key} must be at most 16 characters. Found {value!r} ({len(title)}).")
    if not _AE_CHARS.match(title):
        raise ConfigError(f"{key} must be printable ASCII without backslash. Found {value!r}.")
    return title


def check_port(key: str, value: Any) -> int:
    """An integer TCP port in 1..65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{key} must be an integer port in 1..65535. Found {value!r}.")
    return value


def check_number(key: str, value: Any, *, low: float, high: float = math.inf,
                 low_open: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key} must be a number in {bracket}{low}, {high}]. Found {value!r}.")
    return float(value)


def check_integer(key: str, value: Any, *, low: int, high: int = 2**31) -> int:
    """An integer in ``[low, high]`` (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer in [{low}, {high}]. Found {value!r}.")
    return value


def check_string(key: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string. Found {value!r}.")
    return value


def check_bool(key: str, value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false. Found {value!r}.")
    return value


def check_table(key: str, value: Any) -> Mapping[str, Any]:
    """A TOML table (a mapping)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a table. Found {type(value).__name__} {value!r}.")
    return value


def check_no_unknown(key: str, table: Mapping[str, Any], known: set[str]) -> None:
    """Refuse keys outside ``known`` (catches typos such as ``prot = 104``)."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{key} has unknown key(s) {', '.join(unknown)}; "
                          f"known keys: {', '.join(sorted(known))}.")


def check_path(value: str, base: Path | None = None) -> Path:
    """A path; relative ones resolve against ``base`` (the configuration file's folder),
    else against the current working directory."""
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return path.resolve()
