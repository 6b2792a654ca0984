"""The MR acquisition attributes of a protocol: the DICOM defined terms a scanner would write for
an :class:`~synthesis.protocol.MRProtocol` (the inverse of :mod:`dicom_node.process.condition`).
The derived series carry them for their target protocol; the simulator of
:mod:`dicom_node.tools` for its source protocol."""
from __future__ import annotations

from synthesis.protocol import Contrast, MRProtocol, SequenceKind

__all__ = ["mr_sequence_attributes", "imaging_frequency_mhz", "GYROMAGNETIC_MHZ_PER_T"]

GYROMAGNETIC_MHZ_PER_T = 42.577478  # 1H


def imaging_frequency_mhz(field_t: float) -> float:
    """The 1H resonance frequency (MHz) at ``field_t`` tesla."""
    return GYROMAGNETIC_MHZ_PER_T * float(field_t)


def mr_sequence_attributes(protocol: MRProtocol) -> dict[str, object]:
    """Scanning Sequence, Sequence Variant, Scan Options, MR Acquisition Type,
    Echo Train Length and Sequence Name for ``protocol`` (DICOM defined terms)."""
    seq = protocol.sequence
    if seq is None:
        seq = {Contrast.T1w: SequenceKind.SE, Contrast.FLAIR: SequenceKind.IR,
               Contrast.T2starw: SequenceKind.GRE}.get(protocol.contrast, SequenceKind.TSE)
    three_d = protocol.dimension == "3D"
    table: dict[SequenceKind, tuple[list[str], list[str], int, str]] = {
        SequenceKind.SE: (["SE"], ["SP"], 1, "se"),
        SequenceKind.TSE: (["SE"], ["SK", "SP", "OSP"], 15 if not three_d else 80, "tse"),
        SequenceKind.GRE: (["GR"], ["SP"], 1, "fl"),
        SequenceKind.SPGR: (["GR"], ["SS", "SP"], 1, "fl"),
        SequenceKind.IR: (["SE", "IR"], ["SK", "SP", "MP"], 16 if not three_d else 120, "tir"),
        SequenceKind.MPRAGE: (["GR", "IR"], ["SK", "SP", "MP"], 1, "tfl"),
    }
    scanning, variant, etl, name = table[seq]
    return {
        "ScanningSequence": scanning,
        "SequenceVariant": variant,
        "ScanOptions": "",
        "MRAcquisitionType": protocol.dimension or ("3D" if seq is SequenceKind.MPRAGE else "2D"),
        "EchoTrainLength": etl,
        "SequenceName": ("*" + name + ("3d1" if three_d else "2d1"))[:16],
        "inversion": "IR" in scanning,
    }
