"""How a derived series is named in the study: its Series Number and Series Description.

Series Number (deterministic, never random or counted, so that a re-run, a restart
or a second node writes the same number)::

    offset + 100 x source Series Number + slot
    slot = 10 x format index (mr 0, enhanced-mr 1, parametric-map 2)
           + target index (T1 1, T1SE 2, T2 3, PD 4, FLAIR 5; 9 for any other)

so every (source series, target, output format) of a study has its own number
(source 7: T2 1703, FLAIR 1705, Enhanced MR T2 1713). The Series Description
says what the series is: ``SYN <contrast>[ SE][ MF| MAP] (RTFSyn) <source
description>`` (docs/PROVENANCE.md).
"""
from __future__ import annotations

from dicom_node.process.encode.formats import OUTPUT_FORMATS, OutputFormat, parse_output_format
from dicom_node.process.encode.provenance import LO_MAX
from synthesis.protocol import PRESETS, Contrast, MRProtocol, SequenceKind

__all__ = ["target_name", "series_slot", "derived_series_number", "derived_series_description",
           "SLOTS_PER_SOURCE"]

SLOTS_PER_SOURCE = 100  # derived Series Numbers per source series (slots 1-9, 11-19, 21-29)
_FORMAT_MARKS = {OutputFormat.MR: "", OutputFormat.ENHANCED_MR: " MF",
                 OutputFormat.PARAMETRIC_MAP: " MAP"}


def target_name(target: MRProtocol) -> str:
    """The preset a target protocol is (``T1``, ``T1SE``, ``T2``, ``PD``, ``FLAIR``)."""
    if target.contrast is Contrast.T1w:
        return "T1SE" if target.sequence in (SequenceKind.SE, SequenceKind.TSE) else "T1"
    return {Contrast.T2w: "T2", Contrast.PDw: "PD"}.get(target.contrast, target.contrast.value)


def series_slot(target: MRProtocol, output_format: str | OutputFormat) -> int:
    """The derived series' slot among a source's: 10 x the output format's index in
    ``OUTPUT_FORMATS`` + the target's 1-based index in ``PRESETS`` (9: other)."""
    name = target_name(target)
    index = PRESETS.index(name) + 1 if name in PRESETS else 9
    return 10 * OUTPUT_FORMATS.index(parse_output_format(output_format).value) + index


def derived_series_number(source_number: int | str | None, target: MRProtocol,
                          output_format: str | OutputFormat, offset: int = 1000) -> int:
    """``offset + 100 x source Series Number + slot`` (:func:`series_slot`); an absent
    source number counts as 0. ValueError when the result leaves 0..2^31-1."""
    number = int(offset) + SLOTS_PER_SOURCE * int(source_number or 0) + series_slot(
        target, output_format)
    if not 0 <= number < 2**31:
        raise ValueError(f"derived Series Number {number} (offset {offset}, source Series "
                         f"Number {source_number}) is outside 0..2^31-1; lower the route's "
                         "series_number_offset.")
    return number


def derived_series_description(target: MRProtocol, source_description: str,
                               output_format: str | OutputFormat = OutputFormat.MR) -> str:
    """``SYN <contrast>[ SE][ MF| MAP] (RTFSyn) <source description>``, at most 64
    characters: synthetic, which contrast (T1w SE for the spin-echo T1 preset), which
    output format (MF: one multi-frame Enhanced MR instance; MAP: a Parametric Map),
    made by RTFSyn, from which series."""
    sequence = " SE" if target_name(target) == "T1SE" else ""
    mark = _FORMAT_MARKS[parse_output_format(output_format)]
    text = f"SYN {target.contrast.value}{sequence}{mark} (RTFSyn) {source_description}".strip()
    return text.replace("\\", "/")[:LO_MAX]
