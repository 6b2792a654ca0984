"""Assembly of classic and Enhanced MR series into volumes, and every rejection reason."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence

from tests.helpers.dicom_factory import (AXIAL, CORONAL, SAGITTAL, axes, make_enhanced, make_series,
                                         oblique_orientation, ramp_volume)
from dicom_node.dicom.identity import is_own_output
from dicom_node.process.assemble import assemble_series, warm_up
from dicom_node.errors import RejectedSeries

SPACING = (2.0, 1.0, 1.5)
ORIGIN = (-10.0, 20.0, 30.0)
SLOPE = 0.5  # factory default: values are exact to slope / 2


def _instance_numbers(paths: list[Path]) -> dict[str, int]:
    return {(ds := pydicom.dcmread(p, stop_before_pixels=True)).SOPInstanceUID:
            int(ds.InstanceNumber) for p in paths}


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL, CORONAL, oblique_orientation(20.0)],
                         ids=["axial", "sagittal", "coronal", "oblique"])
def test_classic_series_geometry_and_values(tmp_path: Path, orientation: tuple) -> None:
    paths = make_series(tmp_path, spacing=SPACING, orientation=orientation, origin=ORIGIN)
    assembled = assemble_series(paths)
    row, col, normal = axes(orientation)

    np.testing.assert_allclose(assembled.volume, ramp_volume(), atol=SLOPE / 2)
    assert assembled.volume.dtype == np.float32
    np.testing.assert_allclose(assembled.spacing, SPACING, rtol=1e-6)
    geo = assembled.geometry
    np.testing.assert_allclose(geo.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(geo.row_direction, row, atol=1e-6)
    np.testing.assert_allclose(geo.column_direction, col, atol=1e-6)
    np.testing.assert_allclose(geo.slice_direction, normal, atol=1e-6)
    # slice k references the instance written for slice k (files were shuffled)
    numbers = _instance_numbers(paths)
    assert [numbers[r.sop_instance_uid] for r in assembled.references] == [1, 2, 3, 4, 5]
    assert "PixelData" not in assembled.header
    assert assembled.header.SeriesInstanceUID == assembled.series_instance_uid


def test_voxel_position_follows_geometry(tmp_path: Path) -> None:
    orientation = oblique_orientation(30.0)
    paths = make_series(tmp_path, orientation=orientation, spacing=SPACING, origin=ORIGIN)
    assembled = assemble_series(paths)
    row, col, normal = axes(orientation)
    expected = (np.asarray(ORIGIN) + 3 * SPACING[0] * normal + 4 * SPACING[1] * col
                + 2 * SPACING[2] * row)
    np.testing.assert_allclose(assembled.geometry.position((3 * SPACING[0], 4 * SPACING[1],
                                                            2 * SPACING[2])), expected, atol=1e-4)


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_enhanced_mr_multiframe(tmp_path: Path, orientation: tuple) -> None:
    path = make_enhanced(tmp_path, spacing=SPACING, orientation=orientation, origin=ORIGIN)
    assembled = assemble_series([path])
    _, _, normal = axes(orientation)
    np.testing.assert_allclose(assembled.volume, ramp_volume(), atol=SLOPE / 2)
    np.testing.assert_allclose(assembled.spacing, SPACING)
    np.testing.assert_allclose(assembled.geometry.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(assembled.geometry.slice_direction, normal, atol=1e-6)
    # frames were stored in reverse slice order
    assert [r.frame_number for r in assembled.references] == [5, 4, 3, 2, 1]
    assert {r.sop_instance_uid for r in assembled.references} == {assembled.header.SOPInstanceUID}


def test_real_world_value_mapping_takes_precedence(tmp_path: Path) -> None:
    def add_rwvm(ds: Dataset, k: int) -> None:
        item = Dataset()
        item.LUTLabel = "TEST"
        item.LUTExplanation = "test mapping"
        item.RealWorldValueFirstValueMapped = 0
        item.RealWorldValueLastValueMapped = 65535
        item.RealWorldValueSlope = 2.0
        item.RealWorldValueIntercept = 1.0
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "1", "UCUM", "no units"
        item.MeasurementUnitsCodeSequence = DicomSequence([unit])
        ds.RealWorldValueMappingSequence = DicomSequence([item])

    paths = make_series(tmp_path, mutate=add_rwvm, slope=1.0, intercept=0.0)
    stored = np.rint(ramp_volume())
    np.testing.assert_allclose(assemble_series(paths).volume, stored * 2.0 + 1.0, atol=1e-3)


# -- rejections ---------------------------------------------------------------------------
def _only(k: int, change):
    return lambda ds, slice_index: change(ds) if slice_index == k else None


def _delete(keyword: str):
    return lambda ds: delattr(ds, keyword)


def _shift_along_normal(mm: float):
    def change(ds: Dataset) -> None:
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
            float(ds.ImagePositionPatient[2]) + mm]
    return change


def _set(**values):
    def change(ds: Dataset) -> None:
        for key, value in values.items():
            setattr(ds, key, value)
    return change


def _compressed(ds: Dataset, k: int) -> None:
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"


def _ours(ds: Dataset, k: int) -> None:
    item = Dataset()
    item.Manufacturer = "RTFSyn node"
    ds.ContributingEquipmentSequence = DicomSequence([item])


REJECTIONS = [
    ("mixed orientation",
     dict(mutate=_only(2, _set(ImageOrientationPatient=[1, 0, 0, 0, 0.9, 0.4359]))),
     "mixed orientations"),
    ("irregular spacing", dict(mutate=_only(3, _shift_along_normal(0.7))),
     "irregular slice spacing"),
    ("duplicate position", dict(mutate=_only(3, _shift_along_normal(-2.0))),
     "duplicate slice positions"),
    ("missing position", dict(mutate=_only(1, _delete("ImagePositionPatient"))),
     "missing ImagePositionPatient in 1 of 5"),
    ("missing orientation", dict(mutate=_only(1, _delete("ImageOrientationPatient"))),
     "missing ImageOrientationPatient"),
    ("missing pixel spacing", dict(mutate=_only(0, _delete("PixelSpacing"))),
     "missing PixelSpacing"),
    ("NaN spacing", dict(mutate=lambda ds, k: _set(PixelSpacing=["nan", "1"])(ds)),
     "PixelSpacing must be 2 finite numbers"),
    ("negative spacing", dict(mutate=lambda ds, k: _set(PixelSpacing=["-1", "1"])(ds)),
     "PixelSpacing must be positive"),
    ("mixed rows/columns", dict(mutate=_only(1, _set(Rows=10, Columns=12))), "mixed Rows/Columns"),
    ("not MR", dict(mutate=lambda ds, k: _set(Modality="CT")(ds)), "not MR: Modality CT"),
    ("synthetic", dict(mutate=lambda ds, k: _set(SyntheticData="YES")(ds)), "series is synthetic"),
    ("our own output", dict(mutate=_ours), "made by this node"),
    ("undecodable", dict(mutate=_compressed, transfer_syntax="1.2.840.10008.1.2.4.100"),
     "transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) cannot be decoded"),
    ("single slice", dict(volume=ramp_volume((1, 12, 10))), "series has 1 slice"),
]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("kwargs, reason", [(kw, r) for _, kw, r in REJECTIONS],
                         ids=[name for name, _, _ in REJECTIONS])
def test_rejections_name_the_rule(tmp_path: Path, kwargs: dict, reason: str) -> None:
    paths = make_series(tmp_path, **kwargs)
    with pytest.raises(RejectedSeries) as info:
        assemble_series(paths)
    assert reason in info.value.reason
    assert "FACTORY" not in info.value.reason and "FAC0001" not in info.value.reason


def test_reject_more_than_one_series(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "a") + make_series(tmp_path / "b")
    with pytest.raises(RejectedSeries, match="files belong to 2 series"):
        assemble_series(paths)


def test_reject_file_that_is_not_dicom(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(RejectedSeries, match="notes.txt: not a readable DICOM file"):
        assemble_series(make_series(tmp_path / "s") + [junk])


def test_reject_a_damaged_deflated_file_by_name(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(paths[0], enforce_file_format=True)
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[:len(raw) - len(raw) // 3])  # the deflate stream cut short: zlib.error
    with pytest.raises(RejectedSeries, match=f"{paths[0].name}: a damaged DICOM file \\(error: "):
        assemble_series(paths)


def test_reject_single_frame_enhanced(tmp_path: Path) -> None:
    path = make_enhanced(tmp_path, ramp_volume((1, 12, 10)))
    with pytest.raises(RejectedSeries, match="series has 1 frame"):
        assemble_series([path])


def test_is_own_output_flags() -> None:
    plain = Dataset()
    assert not is_own_output(plain)
    plain.SyntheticData = "YES"
    assert is_own_output(plain)


def test_warm_up_assembles_its_own_tiny_series(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dicom_node.process.assemble"):
        warm_up()
    assert not caplog.records
