"""DICOM tags → MRProtocol: the contrast classifier table, Enhanced MR, absurd values."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.helpers.dicom_factory import make_enhanced, make_series
from dicom_node.errors import RejectedSeries
from dicom_node.tools.simseries import write_series
from dicom_node.process.condition import protocol_from_dataset
from synthesis.condition import prompt
from synthesis.protocol import Contrast, SequenceKind, preset


def _ds(**tags: object) -> Dataset:
    ds = Dataset()
    ds.PatientName = "SECRET^NAME"
    ds.PatientID = "SECRET-ID-42"
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


# (case, tags, expected contrast, expected sequence kind)
CLASSIFIER_TABLE = [
    ("MPRAGE", dict(ScanningSequence=["GR", "IR"], SequenceVariant=["SK", "SP", "MP"],
                    RepetitionTime="2300", EchoTime="2.98", InversionTime="900", FlipAngle="9"),
     Contrast.T1w, SequenceKind.MPRAGE),
    ("SE T1", dict(ScanningSequence="SE", SequenceVariant="SP", RepetitionTime="500",
                   EchoTime="12"), Contrast.T1w, SequenceKind.SE),
    ("TSE T2", dict(ScanningSequence="SE", SequenceVariant=["SK", "SP"], RepetitionTime="4000",
                    EchoTime="100", EchoTrainLength=15), Contrast.T2w, SequenceKind.TSE),
    ("TSE PD", dict(ScanningSequence="SE", SequenceVariant=["SK", "SP"], RepetitionTime="3000",
                    EchoTime="12", EchoTrainLength=8), Contrast.PDw, SequenceKind.TSE),
    ("FLAIR", dict(ScanningSequence=["SE", "IR"], SequenceVariant=["SK", "SP", "MP"],
                   RepetitionTime="9000", EchoTime="110", InversionTime="2500"),
     Contrast.FLAIR, SequenceKind.IR),
    ("FLAIR by ScanOptions IR", dict(ScanningSequence="SE", ScanOptions="IR",
                                     RepetitionTime="9000", EchoTime="90", InversionTime="2200"),
     Contrast.FLAIR, SequenceKind.IR),
    ("STIR", dict(ScanningSequence=["SE", "IR"], RepetitionTime="4000", EchoTime="60",
                  InversionTime="150"), Contrast.T2w, SequenceKind.IR),
    ("T1 FLAIR", dict(ScanningSequence=["SE", "IR"], RepetitionTime="2000", EchoTime="10",
                      InversionTime="800"), Contrast.T1w, SequenceKind.IR),
    ("T2* GRE", dict(ScanningSequence="GR", RepetitionTime="600", EchoTime="20",
                     FlipAngle="20"), Contrast.T2starw, SequenceKind.GRE),
    ("SPGR T1", dict(ScanningSequence="GR", SequenceVariant=["SS", "SP"], RepetitionTime="20",
                     EchoTime="4", FlipAngle="25"), Contrast.T1w, SequenceKind.SPGR),
    ("keyword FLAIR", dict(SeriesDescription="AX T2 FLAIR"), Contrast.FLAIR, None),
    ("keyword T2*", dict(SeriesDescription="t2_star_tra"), Contrast.T2starw, None),
    ("keyword SWI", dict(SeriesDescription="SWI_Images"), Contrast.T2starw, None),
    ("keyword MPRAGE", dict(SeriesDescription="sag mp-rage"), Contrast.T1w, None),
    ("keyword PD", dict(SeriesDescription="pd_tse_cor"), Contrast.PDw, None),
    ("keyword T2", dict(ScanningSequence="SE", SeriesDescription="t2_tse_tra"),
     Contrast.T2w, SequenceKind.SE),
    ("physics beats keyword", dict(ScanningSequence="SE", RepetitionTime="500", EchoTime="10",
                                   SeriesDescription="T2 something"),
     Contrast.T1w, SequenceKind.SE),
]


@pytest.mark.parametrize("tags, contrast, sequence", [row[1:] for row in CLASSIFIER_TABLE],
                         ids=[row[0] for row in CLASSIFIER_TABLE])
def test_classifier_table(tags: dict, contrast: Contrast, sequence: SequenceKind | None) -> None:
    protocol = protocol_from_dataset(_ds(**tags))
    assert protocol.contrast is contrast
    assert protocol.sequence == sequence


def test_unclassifiable_is_rejected() -> None:
    ds = _ds(ScanningSequence="EP", SeriesDescription="ep2d_diff")
    with pytest.raises(RejectedSeries, match="source contrast cannot be classified"):
        protocol_from_dataset(ds)


def test_classic_series_protocol(tmp_path: Path) -> None:
    path = make_series(tmp_path, spacing=(2.0, 0.9, 0.8))[0]
    protocol = protocol_from_dataset(pydicom.dcmread(path))
    assert protocol.contrast is Contrast.T1w and protocol.sequence is SequenceKind.MPRAGE
    assert (protocol.tr_ms, protocol.te_ms, protocol.ti_ms, protocol.flip_deg) == (
        2300.0, 2.98, 900.0, 9.0)
    assert protocol.field_t == 3.0 and protocol.dimension == "3D"
    assert protocol.manufacturer == "SIEMENS" and protocol.model == "Prisma"
    assert protocol.voxel_mm == (0.9, 0.8, 2.0) and protocol.slice_thickness_mm == 2.0


def test_enhanced_mr_functional_groups(tmp_path: Path) -> None:
    path = make_enhanced(tmp_path, spacing=(1.5, 0.9, 0.8), repetition_time=2000.0,
                         echo_time=3.1, inversion_time=1000.0, flip_angle=8.0)
    protocol = protocol_from_dataset(pydicom.dcmread(path))
    assert protocol.contrast is Contrast.T1w and protocol.sequence is SequenceKind.MPRAGE
    assert (protocol.tr_ms, protocol.te_ms, protocol.ti_ms, protocol.flip_deg) == (
        2000.0, 3.1, 1000.0, 8.0)
    assert protocol.voxel_mm == (0.9, 0.8, 1.5)


def test_slice_spacing_stands_in_for_missing_thickness() -> None:
    ds = _ds(ScanningSequence="SE", RepetitionTime="500", EchoTime="10", PixelSpacing=[1, 1])
    assert protocol_from_dataset(ds, slice_spacing_mm=3.0).voxel_mm == (1.0, 1.0, 3.0)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("tags, field, expected", [
    (dict(RepetitionTime="-500"), "tr_ms", None),
    (dict(FlipAngle="nan"), "flip_deg", None),
    (dict(FlipAngle="270"), "flip_deg", None),
    (dict(MagneticFieldStrength="15000"), "field_t", 1.5),
    (dict(MagneticFieldStrength="30"), "field_t", None),
    (dict(InversionTime="900"), "ti_ms", None),  # no inversion in the sequence
], ids=["negative TR", "NaN flip", "flip > 180", "field in gauss", "field absurd", "TI without IR"])
def test_absurd_values_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture, tags: dict,
                                                  field: str, expected: float | None) -> None:
    base = dict(ScanningSequence="SE", RepetitionTime="500", EchoTime="10",
                SeriesDescription="t1_se_tra")
    with caplog.at_level(logging.WARNING, logger="dicom_node.process.condition"):
        protocol = protocol_from_dataset(_ds(**{**base, **tags}))
    assert getattr(protocol, field) == expected
    assert protocol.contrast is Contrast.T1w
    assert caplog.records, "a dropped or corrected value must be logged"


def test_te_above_tr_drops_both_and_falls_back_to_keywords(
        caplog: pytest.LogCaptureFixture) -> None:
    ds = _ds(ScanningSequence="SE", RepetitionTime="50", EchoTime="100",
             SeriesDescription="t2_tse")
    with caplog.at_level(logging.WARNING, logger="dicom_node.process.condition"):
        protocol = protocol_from_dataset(ds)
    assert protocol.tr_ms is None and protocol.te_ms is None
    assert protocol.contrast is Contrast.T2w
    assert any("must be shorter than TR" in r.getMessage() for r in caplog.records)


def test_no_patient_data_in_protocol_prompt_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    ds = _ds(ScanningSequence="SE", RepetitionTime="4000", EchoTime="100",
             Manufacturer="GE MEDICAL SYSTEMS", SeriesDescription="T2 for SECRET^NAME")
    with caplog.at_level(logging.DEBUG):
        protocol = protocol_from_dataset(ds)
    text = str(protocol.to_dict()) + prompt(protocol, preset("FLAIR")) + caplog.text
    assert "SECRET" not in text


@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize("name", ["T1", "T1SE", "T2", "PD", "FLAIR"])
def test_simulated_series_round_trip(tmp_path: Path, name: str, enhanced: bool) -> None:
    """Every preset written by simseries is read back as the same protocol physics."""
    written = preset(name, field_t=1.5)
    path = write_series(np.full((3, 8, 8), 100.0), (2.0, 1.0, 1.0), written, tmp_path,
                        enhanced=enhanced, seed=5)[0]
    read = protocol_from_dataset(pydicom.dcmread(path))
    for attribute in ("contrast", "sequence", "dimension", "tr_ms", "te_ms", "ti_ms", "field_t",
                      "slice_thickness_mm"):
        assert getattr(read, attribute) == getattr(written, attribute), attribute
