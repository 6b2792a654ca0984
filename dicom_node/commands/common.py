"""What the node's commands share: loading ``node.toml`` with one error message and exit code."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - the config module is imported when a command runs
    from dicom_node.config import Config

__all__ = ["EXIT_CONFIG", "load_config_or_report"]

EXIT_CONFIG = 2  # exit status of a command whose configuration cannot be used


def load_config_or_report(command: str, path: Path) -> "Config | None":
    """The configuration at ``path``; None after telling stderr why it cannot be used
    (``rtfsyn <command>: configuration error: <file, key, rule and value found>``)."""
    from dicom_node.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"rtfsyn {command}: configuration error: {exc}", file=sys.stderr)
        return None
