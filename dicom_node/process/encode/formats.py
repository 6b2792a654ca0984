"""The output formats of a derived series (``[[routes]] output_format``,
``rtfsyn synthesize --format``); :mod:`dicom_node.process.encode.derived` has one writer each."""
from __future__ import annotations

import enum

__all__ = ["OutputFormat", "OUTPUT_FORMATS", "parse_output_format"]


class OutputFormat(str, enum.Enum):
    """``mr``: classic MR Image Storage, one file per slice (the default); ``enhanced-mr``: one
    Legacy Converted Enhanced MR instance; ``parametric-map``: one float32 Parametric Map."""

    MR = "mr"
    ENHANCED_MR = "enhanced-mr"
    PARAMETRIC_MAP = "parametric-map"

    def __str__(self) -> str:
        return self.value


OUTPUT_FORMATS = tuple(member.value for member in OutputFormat)


def parse_output_format(value: str | OutputFormat) -> OutputFormat:
    """``value`` as an :class:`OutputFormat`; a ValueError naming the allowed values if none."""
    try:
        return OutputFormat(value)
    except ValueError:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}. "
                         f"Found {value!r}.") from None
