"""The derived series (DESIGN §4): geometry, provenance, pixels, formats, dciodvfy.

A stub ``SynthesisResult`` (the contract of ``synthesis.inference``) stands in
for the network so these tests run in a fraction of a second each.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.helpers.dicom_factory import (DCIODVFY, SAGITTAL, T2_TSE, axes, dciodvfy_errors,
                                         make_enhanced, make_series, oblique_orientation)
from dicom_node.process.assemble import assemble_series
from dicom_node.process.volume import AssembledVolume
from dicom_node.process.encode.derived import write_derived_series
from dicom_node.process.encode.provenance import NodeInfo
from dicom_node.process.encode.classic_mr import INTENSITY_SCALE
from dicom_node.errors import RejectedSeries
from dicom_node.process.condition import protocol_from_dataset
from synthesis.condition import prompt
from synthesis.protocol import preset

MODEL_INFO = {"model_name": "RTFSyn", "model_version": "0.1.0+test",
              "checkpoint_sha256": "c0ffee" * 10 + "abcd",
              "architecture": {"refinement": "axis", "channels": [8, 12]}, "device": "cpu"}
NEEDS_DCIODVFY = pytest.mark.skipif(shutil.which(DCIODVFY) is None, reason="dciodvfy not installed")


@dataclass(frozen=True)
class StubResult:
    volume: np.ndarray
    spacing: tuple[float, float, float]
    origin_offset_mm: tuple[float, float, float]
    prompt: str


def _same_grid_result(assembled: AssembledVolume, text: str = "a prompt") -> StubResult:
    vol = assembled.volume - assembled.volume.min()
    return StubResult((vol / vol.max()).astype(np.float32), assembled.spacing, (0.0, 0.0, 0.0),
                      text)


def _write(assembled: AssembledVolume, out: Path, result: StubResult | None = None,
           **kwargs) -> list[Path]:
    source = protocol_from_dataset(assembled.header)
    target = kwargs.pop("target", preset("FLAIR"))
    result = result or _same_grid_result(assembled, prompt(source, target))
    return write_derived_series(result, assembled, target, out, prompt=result.prompt,
                                model_info=kwargs.pop("model_info", MODEL_INFO),
                                node=NodeInfo(station_name="NODE1"), source=source, **kwargs)


@pytest.fixture()
def source(tmp_path: Path) -> tuple[list[Path], AssembledVolume]:
    paths = make_series(tmp_path / "src", spacing=(1.2, 1.0, 1.1), tags=T2_TSE)
    return paths, assemble_series(paths)


def test_geometry_equals_source(tmp_path: Path, source) -> None:
    src_paths, assembled = source
    out = [pydicom.dcmread(p) for p in _write(assembled, tmp_path / "out")]
    src = sorted((pydicom.dcmread(p) for p in src_paths), key=lambda d: int(d.InstanceNumber))
    assert len(out) == len(src)
    for derived, original in zip(out, src):
        np.testing.assert_allclose([float(v) for v in derived.ImagePositionPatient],
                                   [float(v) for v in original.ImagePositionPatient], atol=1e-4)
        np.testing.assert_allclose([float(v) for v in derived.ImageOrientationPatient],
                                   [float(v) for v in original.ImageOrientationPatient], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in derived.PixelSpacing],
                                   [float(v) for v in original.PixelSpacing])
        assert (derived.Rows, derived.Columns) == (original.Rows, original.Columns)
    # the derived series assembles to the same geometry
    again = assemble_series_ignoring_loop_guard([p for p in (tmp_path / "out").iterdir()])
    np.testing.assert_allclose(again.geometry.origin, assembled.geometry.origin, atol=1e-4)


def assemble_series_ignoring_loop_guard(paths: list[Path]) -> AssembledVolume:
    """Our own output is refused by assembly (loop guard); strip the markers to reassemble."""
    clean = []
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.SyntheticData
        del ds.ContributingEquipmentSequence
        target = p.with_suffix(".plain")
        ds.save_as(target)
        clean.append(target)
    return assemble_series(clean)


def test_pixels_decode_and_match(tmp_path: Path, source) -> None:
    _, assembled = source
    result = _same_grid_result(assembled)
    for k, path in enumerate(_write(assembled, tmp_path / "out", result)):
        ds = pydicom.dcmread(path)
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(values / INTENSITY_SCALE, result.volume[k],
                                   atol=float(ds.RescaleSlope) / INTENSITY_SCALE)
        assert ds.pixel_array.dtype == np.uint16
        assert float(ds.WindowWidth) >= 1.0


def test_provenance_tags(tmp_path: Path, source) -> None:
    src_paths, assembled = source
    paths = _write(assembled, tmp_path / "out")
    src = [pydicom.dcmread(p) for p in src_paths]
    source_uids = {d.SOPInstanceUID for d in src}
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
    assert ds.SyntheticData == "YES"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.StudyInstanceUID == src[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src[0].SeriesInstanceUID
    assert ds.PatientName == src[0].PatientName and ds.PatientID == src[0].PatientID
    assert ds.SeriesDescription == "SYN FLAIR (RTFSyn) t2_tse_ax"
    assert ds.SeriesNumber == 1000 + 100 * int(src[0].SeriesNumber) + 5  # FLAIR: slot 5
    for text in (MODEL_INFO["model_version"], MODEL_INFO["checkpoint_sha256"],
                 "Prompt: Synthesize"):
        assert text in ds.DerivationDescription
    assert ds.DerivationCodeSequence[0].CodingSchemeDesignator == "DCM"
    ours = [e for e in ds.ContributingEquipmentSequence
            if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"]
    assert len(ours) == 1
    equipment = ours[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Synthesizing Equipment"
    assert equipment.Manufacturer == "RTFSyn node" and equipment.ManufacturerModelName == "RTFSyn"
    assert equipment.DeviceUID and equipment.ContributionDateTime and equipment.SoftwareVersions
    assert equipment.StationName == "NODE1" and equipment.ContributionDescription
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID
    for path in paths:
        item_uids = {i.ReferencedSOPInstanceUID for i in pydicom.dcmread(path).SourceImageSequence}
        assert item_uids and item_uids <= source_uids
    item = ds.SourceImageSequence[0]
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"


def test_target_protocol_attributes(tmp_path: Path, source) -> None:
    _, assembled = source
    target = preset("FLAIR", field_t=1.5)
    ds = pydicom.dcmread(_write(assembled, tmp_path / "out", target=target)[0])
    assert float(ds.RepetitionTime) == target.tr_ms and float(ds.EchoTime) == target.te_ms
    assert float(ds.InversionTime) == target.ti_ms and float(ds.FlipAngle) == target.flip_deg
    assert float(ds.MagneticFieldStrength) == 1.5 and ds.MRAcquisitionType == "3D"
    assert "IR" in list(ds.ScanningSequence)


def test_series_uid_reuse_is_deterministic_and_device_uid_tracks_the_model(tmp_path: Path,
                                                                          source) -> None:
    _, assembled = source
    first = _write(assembled, tmp_path / "a", series_uid="1.2.3.4.5")
    second = _write(assembled, tmp_path / "b", series_uid="1.2.3.4.5")
    other_model = _write(assembled, tmp_path / "c", series_uid="1.2.3.4.5",
                         model_info={**MODEL_INFO, "checkpoint_sha256": "f" * 64})
    uids = [[pydicom.dcmread(p).SOPInstanceUID for p in paths] for paths in (first, second)]
    assert uids[0] == uids[1] and len(set(uids[0])) == len(uids[0])
    device = [pydicom.dcmread(p[0]).ContributingEquipmentSequence[-1].DeviceUID
              for p in (first, second, other_model)]
    assert device[0] == device[1] != device[2]


def test_text_limits(tmp_path: Path, source) -> None:
    _, assembled = source
    assembled.header.SeriesDescription = "x" * 64
    result = _same_grid_result(assembled, "word " * 400)
    ds = pydicom.dcmread(_write(assembled, tmp_path / "out", result)[0])
    assert len(ds.SeriesDescription) <= 64 and ds.SeriesDescription.startswith("SYN FLAIR")
    assert len(ds.DerivationDescription) <= 1024


def test_resampled_output_grid(tmp_path: Path) -> None:
    """1 mm output from 2 mm slices: positions follow the contract, references overlap."""
    orientation = oblique_orientation(15.0)
    assembled = assemble_series(make_series(tmp_path / "src", spacing=(2.0, 1.0, 1.0),
                                            orientation=orientation, tags=T2_TSE))
    zs = assembled.volume.shape[0] * 2
    result = StubResult(np.random.default_rng(0).random((zs, 12, 10), dtype=np.float32),
                        (1.0, 1.0, 1.0), (-0.5, 0.0, 0.0), "p")
    paths = _write(assembled, tmp_path / "out", result)
    assert len(paths) == zs
    _, _, normal = axes(orientation)
    for k in (0, 1, 2, 9):
        ds = pydicom.dcmread(paths[k])
        expected = np.asarray(assembled.geometry.origin) + (-0.5 + k * 1.0) * normal
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-4)
        index = {r.sop_instance_uid: j for j, r in enumerate(assembled.references)}
        refs = [index[item.ReferencedSOPInstanceUID] for item in ds.SourceImageSequence]
        assert refs == [k // 2]  # each 1 mm slice lies inside one 2 mm source slice


def test_enhanced_source_references_frames(tmp_path: Path) -> None:
    assembled = assemble_series([make_enhanced(tmp_path / "src")])
    ds = pydicom.dcmread(_write(assembled, tmp_path / "out")[0])
    item = ds.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == assembled.header.SOPInstanceUID
    assert item.ReferencedFrameNumber == assembled.references[0].frame_number


def test_derived_series_is_refused_as_input(tmp_path: Path, source) -> None:
    _, assembled = source
    with pytest.raises(RejectedSeries, match="synthetic"):
        assemble_series(_write(assembled, tmp_path / "out"))


def test_enhanced_mr_format(tmp_path: Path, source) -> None:
    _, assembled = source
    (path,) = _write(assembled, tmp_path / "out", output_format="enhanced-mr")
    image = hd.imread(path)
    assert image.SyntheticData == "YES" and int(image.NumberOfFrames) == assembled.volume.shape[0]
    assert any(e.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
               for e in image.ContributingEquipmentSequence)
    volume = image.get_volume()
    assert volume.spatial_shape == assembled.volume.shape
    np.testing.assert_allclose(sorted(volume.spacing), sorted(assembled.spacing), rtol=1e-5)


def test_parametric_map_format(tmp_path: Path, source) -> None:
    _, assembled = source
    result = _same_grid_result(assembled)
    (path,) = _write(assembled, tmp_path / "out", result, output_format="parametric-map")
    ds = pydicom.dcmread(path)
    assert ds.SyntheticData == "YES" and "FloatPixelData" in ds
    assert "Prompt:" in ds.DerivationDescription
    volume = hd.imread(path).get_volume(apply_real_world_transform=False)
    if float(np.dot(volume.direction[:, 0], assembled.geometry.slice_direction)) < 0:
        volume = volume.flip_spatial(0)
    np.testing.assert_allclose(volume.array, result.volume, atol=1e-6)
    np.testing.assert_allclose(volume.position, assembled.geometry.origin, atol=1e-4)


@NEEDS_DCIODVFY
@pytest.mark.parametrize("output_format", ["mr", "enhanced-mr", "parametric-map"])
def test_dciodvfy_reports_no_errors(tmp_path: Path, output_format: str) -> None:
    assembled = assemble_series(make_series(tmp_path / "src", orientation=SAGITTAL,
                                            tags=T2_TSE, mutate=_body_part))
    for path in _write(assembled, tmp_path / "out", output_format=output_format):
        assert dciodvfy_errors(path) == []


def _body_part(ds: pydicom.Dataset, k: int) -> None:
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"


def test_series_numbers_differ_per_target_and_format() -> None:
    """Every (target, output format) of one source series gets its own Series Number, the
    same every time, and none repeats another source's (numbers 7 and 8 here)."""
    from dicom_node.process.encode.formats import OUTPUT_FORMATS
    from dicom_node.process.encode.naming import (derived_series_description,
                                                  derived_series_number)
    from synthesis.protocol import PRESETS, preset

    numbers = {(source, name, fmt): derived_series_number(source, preset(name), fmt, 1000)
               for source in (7, 8) for name in PRESETS for fmt in OUTPUT_FORMATS}
    assert len(set(numbers.values())) == len(numbers) == 2 * 5 * 3
    assert numbers[(7, "T2", "mr")] == 1703 and numbers[(7, "FLAIR", "mr")] == 1705
    assert numbers[(7, "T2", "enhanced-mr")] == 1713
    assert derived_series_number(7, preset("T2"), "mr", 1000) == 1703  # deterministic
    descriptions = {derived_series_description(preset(name), "t1_mprage", fmt)
                    for name in PRESETS for fmt in OUTPUT_FORMATS}
    assert len(descriptions) == 15 and "SYN T1w SE MAP (RTFSyn) t1_mprage" in descriptions
