"""Realistic vendor-like MR headers for the eligibility tests: what Siemens, GE and Philips
scanners write for the series a synthesis node must refuse, and for ones it must accept.

Each :class:`Case` is written by :func:`write_case` as a classic MR series (or one
Enhanced MR instance) through :mod:`dicom_factory`. The attribute values follow
what the vendors put in the standard attributes (Image Type values, Scanning
Sequence, Sequence Name, Body Part Examined, Number of Temporal Positions) and in
their documented private tags (Siemens ``SIEMENS MR HEADER`` mosaic count and
b-value, GE ``GEMS_PARM_01`` image type and b-value, Philips ``Philips Imaging DD
001`` b-factor).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydicom.dataset import Dataset

from tests.helpers.dicom_factory import make_enhanced, make_series, ramp_volume

SHAPE = (12, 16, 16)          # (z, y, x): enough slices and coverage for the volume rules
SPACING = (3.0, 2.0, 2.0)     # (dz, dy, dx) mm: 36 mm of coverage

SIEMENS_T1 = dict(Manufacturer="SIEMENS", ManufacturerModelName="Prisma",
                  ScanningSequence=["GR", "IR"], SequenceVariant=["SK", "SP", "MP"],
                  SequenceName="*tfl3d1_16ns", MRAcquisitionType="3D", RepetitionTime="2300",
                  EchoTime="2.98", InversionTime="900", FlipAngle="9",
                  MagneticFieldStrength="3", SeriesDescription="t1_mprage_sag_p2",
                  ProtocolName="t1_mprage_sag_p2", BodyPartExamined="HEAD",
                  ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "NORM"])
GE_T2 = dict(Manufacturer="GE MEDICAL SYSTEMS", ManufacturerModelName="DISCOVERY MR750",
             ScanningSequence="SE", SequenceVariant=["SK", "OSP"], MRAcquisitionType="2D",
             RepetitionTime="4500", EchoTime="102.4", FlipAngle="111", EchoTrainLength=16,
             MagneticFieldStrength="1.5", SeriesDescription="Ax T2 FRFSE",
             ProtocolName="BRAIN ROUTINE", BodyPartExamined="BRAIN",
             ImageType=["ORIGINAL", "PRIMARY", "OTHER"])
PHILIPS_FFE = dict(Manufacturer="Philips Medical Systems", ManufacturerModelName="Ingenia",
                   ScanningSequence="GR", SequenceVariant="SP", MRAcquisitionType="3D",
                   RepetitionTime="8.1", EchoTime="3.7", FlipAngle="8",
                   MagneticFieldStrength="3", SeriesDescription="T1W_3D_TFE",
                   ProtocolName="WIP T1W_3D_TFE", BodyPartExamined="HEAD",
                   ImageType=["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"])

Mutate = Callable[[Dataset, int], None]


def _private(group: int, creator: str, offset: int, vr: str, value: Any) -> Mutate:
    """A mutation that writes one private element of ``creator``'s block."""
    def mutate(ds: Dataset, _k: int) -> None:
        ds.private_block(group, creator, create=True).add_new(offset, vr, value)
    return mutate


def _chain(*steps: Mutate) -> Mutate:
    def mutate(ds: Dataset, k: int) -> None:
        for step in steps:
            step(ds, k)
    return mutate


@dataclass(frozen=True)
class Case:
    """One realistic series: base tags, changes, its volume, and the rule expected to refuse
    it (None: eligible). ``enhanced``: one Enhanced MR instance instead of classic slices."""

    base: dict[str, Any]
    changes: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    mutate: Mutate | None = None
    volume: Callable[[], np.ndarray] = lambda: ramp_volume(SHAPE)
    spacing: tuple[float, float, float] = SPACING
    enhanced: bool = False

    def tags(self) -> dict[str, Any]:
        out = {**self.base, **self.changes}
        return {k: v for k, v in out.items() if v is not None}


def _zeros() -> np.ndarray:
    return np.zeros(SHAPE)


def _near_constant() -> np.ndarray:
    rng = np.random.default_rng(5)
    return 400.0 + rng.uniform(-2.0, 2.0, size=SHAPE)  # noise of +-0.5 % around a plateau


CASES: dict[str, Case] = {
    # -- eligible ---------------------------------------------------------------------
    "siemens T1 MPRAGE": Case(SIEMENS_T1),
    "GE T2 FRFSE": Case(GE_T2),
    "Philips T1 TFE": Case(PHILIPS_FFE),
    # -- refused by the header rules --------------------------------------------------
    "Siemens DWI mosaic": Case(SIEMENS_T1, dict(
        ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC"],
        ScanningSequence="EP", SequenceVariant=["SK", "SP"], SequenceName="*ep_b1000t",
        MRAcquisitionType="2D", RepetitionTime="5200", EchoTime="89", InversionTime=None,
        FlipAngle="90", SeriesDescription="ep2d_diff_mddw_20_p2",
        ProtocolName="ep2d_diff_mddw_20_p2"), "mosaic",
        mutate=_chain(_private(0x0019, "SIEMENS MR HEADER", 0x0A, "US", 64),
                      _private(0x0019, "SIEMENS MR HEADER", 0x0C, "IS", 1000))),
    "Siemens ADC map": Case(SIEMENS_T1, dict(
        ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"],
        ScanningSequence="EP", SequenceName="*ep_b0_1000", RepetitionTime="5200",
        EchoTime="89", InversionTime=None, SeriesDescription="ep2d_diff_ADC"), "derived"),
    "Philips DWI (b-factor private tag)": Case(PHILIPS_FFE, dict(
        ScanningSequence="SE", SequenceVariant="SK", RepetitionTime="3200", EchoTime="80",
        SeriesDescription="DWI_SENSE", ProtocolName="WIP DWI_SENSE"), "diffusion",
        mutate=_private(0x2001, "Philips Imaging DD 001", 0x03, "FL", 1000.0)),
    "GE DWI (b-value + 10^9)": Case(GE_T2, dict(
        ScanningSequence=["SE"], SequenceVariant="NONE", SeriesDescription="Ax 3 plane DIFF",
        RepetitionTime="8000", EchoTime="85"), "diffusion",
        mutate=_private(0x0043, "GEMS_PARM_01", 0x39, "IS", ["1000001000", "8", "0", "0"])),
    "GE BOLD EPI": Case(GE_T2, dict(
        ScanningSequence=["EP", "GR"], SequenceVariant="NONE", RepetitionTime="2000",
        EchoTime="30", FlipAngle="77", SeriesDescription="rsfMRI 8min"), "epi"),
    "Philips DCE dynamic": Case(PHILIPS_FFE, dict(
        SeriesDescription="T1W_FFE_DYN", ProtocolName="WIP T1W_FFE_DYN",
        NumberOfTemporalPositions=60, TemporalPositionIdentifier=1), "perfusion"),
    "GE 3D ASL": Case(GE_T2, dict(
        ImageType=["ORIGINAL", "PRIMARY", "ASL"], SeriesDescription="3D ASL (non-contrast)",
        RepetitionTime="4800", EchoTime="10.5"), "perfusion"),
    "Siemens SVS": Case(SIEMENS_T1, dict(
        ImageType=["ORIGINAL", "PRIMARY", "SPECTROSCOPY", "NONE"], ScanningSequence="SE",
        SequenceName="*svs_se", RepetitionTime="2000", EchoTime="30", InversionTime=None,
        SeriesDescription="svs_se_30"), "spectroscopy"),
    "Siemens localizer": Case(SIEMENS_T1, dict(
        ScanningSequence="GR", SequenceVariant=["SP", "OSP"], SequenceName="*fl2d1",
        MRAcquisitionType="2D", RepetitionTime="8.6", EchoTime="4", InversionTime=None,
        FlipAngle="20", SeriesDescription="localizer", ProtocolName="localizer"),
        "localizer"),
    "GE 3-plane loc": Case(GE_T2, dict(
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="3-Plane Loc"),
        "localizer"),
    "Philips survey": Case(PHILIPS_FFE, dict(SeriesDescription="Survey",
                                             ProtocolName="WIP Survey"), "localizer"),
    "Siemens field map phase": Case(SIEMENS_T1, dict(
        ImageType=["ORIGINAL", "PRIMARY", "P", "ND"], ScanningSequence="GR",
        SequenceVariant="SP", SequenceName="*fm2d2r", MRAcquisitionType="2D",
        RepetitionTime="488", EchoTime="7.38", InversionTime=None, FlipAngle="60",
        SeriesDescription="gre_field_mapping"), "phase"),
    "Philips phase map": Case(PHILIPS_FFE, dict(
        ImageType=["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"],
        SeriesDescription="B0_map"), "phase"),
    "GE phase (private image type)": Case(GE_T2, dict(
        ScanningSequence="GR", SequenceVariant="SS", RepetitionTime="40", EchoTime="25",
        FlipAngle="15", SeriesDescription="Ax SWAN"), "phase",
        mutate=_private(0x0043, "GEMS_PARM_01", 0x2F, "SS", 1)),
    "Siemens MPR (derived)": Case(SIEMENS_T1, dict(
        ImageType=["DERIVED", "PRIMARY", "MPR", "NORM", "DIS2D"],
        SeriesDescription="t1_mprage_sag_p2_MPR_ax"), "derived"),
    "Secondary capture style": Case(GE_T2, dict(
        ImageType=["ORIGINAL", "SECONDARY", "OTHER"]), "derived"),
    "Knee T2 (body part)": Case(SIEMENS_T1, dict(
        ScanningSequence="SE", SequenceVariant=["SK", "SP"], RepetitionTime="3800",
        EchoTime="95", InversionTime=None, FlipAngle="150", SeriesDescription="t2_tse_sag",
        BodyPartExamined="KNEE"), "body_part"),
    "Unclassifiable research sequence": Case(SIEMENS_T1, dict(
        ScanningSequence="RM", SequenceVariant="NONE", SequenceName="%CustomerSeq%",
        RepetitionTime=None, EchoTime=None, InversionTime=None, FlipAngle=None,
        SeriesDescription="ax 5mm research", ProtocolName="ax 5mm research"), "contrast"),
    "Impossible values, no keyword": Case(SIEMENS_T1, dict(
        ScanningSequence="SE", SequenceVariant="SK", RepetitionTime="-5",
        EchoTime="1000000000", InversionTime=None, FlipAngle="720",
        SeriesDescription="ax 5mm", ProtocolName="ax 5mm"), "contrast"),
    # -- refused by the volume rules --------------------------------------------------
    "Enhanced MR, all-zero pixels": Case(SIEMENS_T1, rule="blank", volume=_zeros,
                                         enhanced=True),
    "near-constant pixels": Case(GE_T2, rule="blank", volume=_near_constant),
    "too few slices": Case(GE_T2, rule="slices", volume=lambda: ramp_volume((4, 16, 16)),
                           spacing=(5.0, 2.0, 2.0)),
    "too small a coverage": Case(SIEMENS_T1, rule="coverage",
                                 volume=lambda: ramp_volume((10, 16, 16)),
                                 spacing=(1.0, 1.0, 1.0)),
}
# Impossible protocol values with a contrast keyword: the values are dropped with recorded
# warnings and the series is synthesized.
IMPOSSIBLE_VALUES = Case(SIEMENS_T1, dict(
    ScanningSequence="SE", SequenceVariant="SK", RepetitionTime="-5", EchoTime="1000000000",
    InversionTime=None, FlipAngle="720", MagneticFieldStrength="150000",
    SeriesDescription="t1_se_tra", ProtocolName="t1_se_tra"))


def write_case(case: Case, folder: Path) -> list[Path]:
    """Write ``case`` into ``folder``; the file paths."""
    if case.enhanced:
        return [make_enhanced(folder, case.volume(), spacing=case.spacing)]
    return make_series(folder, case.volume(), spacing=case.spacing, tags=case.tags(),
                       mutate=case.mutate)
