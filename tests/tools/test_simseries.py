"""Simulated DICOM MR series (dicom_node.tools.simseries) and ``rtfsyn simulate``."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage

from dicom_node.tools.simseries import PatientInfo, write_series
from synthesis.protocol import MRProtocol, preset

DCIODVFY = "/usr/bin/dciodvfy"
SPACING = (2.5, 0.8, 1.2)  # (dz, dy, dx) mm
ORIGIN = (-10.0, 20.0, 30.0)  # LPS (x, y, z) mm of voxel (0, 0, 0)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """A small non-cubic (z, y, x) volume with a gradient so slices differ."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(5), np.arange(12), np.arange(10), indexing="ij")
    return (100.0 * z + 3.0 * y + x + rng.uniform(0, 1, size=z.shape)).astype(np.float32)


def _read_sorted(folder: Path) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _stack(datasets: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                     for ds in datasets])


def test_classic_round_trip_values_and_geometry(volume: np.ndarray, tmp_path: Path) -> None:
    protocol = preset("FLAIR", 3.0)
    paths = write_series(volume, SPACING, protocol, tmp_path, origin_mm=ORIGIN, seed=1,
                         series_number=7)
    assert len(paths) == volume.shape[0]
    datasets = _read_sorted(tmp_path)
    slope = float(datasets[0].RescaleSlope)
    np.testing.assert_allclose(_stack(datasets), volume, atol=slope * 0.51)
    assert slope == pytest.approx((volume.max() - volume.min()) / 4095, rel=1e-6)
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
            [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[0]])
        assert [float(v) for v in ds.PixelSpacing] == [SPACING[1], SPACING[2]]
        assert (ds.Rows, ds.Columns) == volume.shape[1:]
        assert ds.InstanceNumber == k + 1 and ds.BitsStored == 12 and ds.pixel_array.dtype == np.uint16
    first = datasets[0]
    assert float(first.SliceThickness) == 1.0  # the protocol's, not the spacing
    assert float(first.SpacingBetweenSlices) == SPACING[0]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID)
                for ds in datasets}) == 1
    assert first.SeriesNumber == 7 and first.SeriesDescription == "FLAIR 3D AX"


def _joined(value: object) -> str:
    """A multi-valued string attribute as DICOM text (pydicom gives a str for one value)."""
    return value if isinstance(value, str) else "\\".join(value)  # type: ignore[arg-type]


def test_mr_headers_follow_the_protocol(volume: np.ndarray, tmp_path: Path) -> None:
    cases = {
        "T1": ("GR\\IR", "SK\\SP\\MP", "3D", True),
        "T1SE": ("SE", "SP", "2D", False),
        "T2": ("SE", "SK\\SP\\OSP", "3D", False),
        "FLAIR": ("SE\\IR", "SK\\SP\\MP", "3D", True),
    }
    for name, (scanning, variant, acquisition, inversion) in cases.items():
        protocol = preset(name, 1.5)
        write_series(volume[:1], SPACING, protocol, tmp_path / name, seed=2)
        ds = _read_sorted(tmp_path / name)[0]
        assert _joined(ds.ScanningSequence) == scanning, name
        assert _joined(ds.SequenceVariant) == variant, name
        assert ds.MRAcquisitionType == acquisition
        assert ("InversionTime" in ds) == inversion
        if inversion:
            assert float(ds.InversionTime) == protocol.ti_ms
        assert float(ds.RepetitionTime) == protocol.tr_ms and float(ds.EchoTime) == protocol.te_ms
        assert float(ds.FlipAngle) == protocol.flip_deg
        assert float(ds.MagneticFieldStrength) == 1.5
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
        assert ds.Manufacturer and ds.ManufacturerModelName
        assert ds.PatientName == "SIM^SUBJECT" and ds.PatientID == "SIM0001"


def test_enhanced_round_trip(volume: np.ndarray, tmp_path: Path) -> None:
    protocol = preset("T2", 3.0)
    paths = write_series(volume, SPACING, protocol, tmp_path, origin_mm=ORIGIN, enhanced=True,
                         seed=3)
    assert len(paths) == 1
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == EnhancedMRImageStorage and int(ds.NumberOfFrames) == volume.shape[0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [SPACING[1], SPACING[2]]
    transform = shared.PixelValueTransformationSequence[0]
    values = ds.pixel_array * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    np.testing.assert_allclose(values, volume, atol=float(transform.RescaleSlope) * 0.51)
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[0]])
    assert shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime == protocol.tr_ms


def test_highdicom_stacks_both_forms_with_the_same_geometry(volume: np.ndarray,
                                                            tmp_path: Path) -> None:
    import highdicom as hd

    write_series(volume, SPACING, preset("PD"), tmp_path / "c", origin_mm=ORIGIN, seed=4)
    [enhanced] = write_series(volume, SPACING, preset("PD"), tmp_path / "e", origin_mm=ORIGIN,
                              seed=4, enhanced=True)
    classic = hd.get_volume_from_series(_read_sorted(tmp_path / "c"))
    multi = hd.imread(enhanced).get_volume()
    n = volume.shape[0]
    for vol in (classic, multi):
        np.testing.assert_allclose(vol.spacing, SPACING)
        first = vol.affine @ np.array([0, 0, 0, 1.0])
        last = vol.affine @ np.array([n - 1, 0, 0, 1.0])
        # highdicom may stack either way along z; the slab is the one written
        assert sorted([first[2], last[2]]) == pytest.approx([ORIGIN[2], ORIGIN[2] + (n - 1) * SPACING[0]])
        assert first[:2] == pytest.approx(ORIGIN[:2])
        expected = volume if first[2] == pytest.approx(ORIGIN[2]) else volume[::-1]
        np.testing.assert_allclose(vol.array, expected, atol=(volume.max() - volume.min()) / 4095)
    np.testing.assert_allclose(classic.array, multi.array)


def test_deterministic_uids_by_seed(volume: np.ndarray, tmp_path: Path) -> None:
    protocol = preset("T2")
    a = _read_sorted(Path(write_series(volume, SPACING, protocol, tmp_path / "a", seed=5)[0]).parent)
    b = _read_sorted(Path(write_series(volume, SPACING, protocol, tmp_path / "b", seed=5)[0]).parent)
    c = _read_sorted(Path(write_series(volume, SPACING, protocol, tmp_path / "c", seed=6)[0]).parent)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].SeriesInstanceUID != c[0].SeriesInstanceUID
    study = "1.2.826.0.1.3680043.8.498.1"
    d = write_series(volume, SPACING, protocol, tmp_path / "d", study_uid=study,
                     frame_of_reference_uid=study + ".2", patient=PatientInfo(patient_id="X1"))
    ds = pydicom.dcmread(d[0])
    assert ds.StudyInstanceUID == study and ds.FrameOfReferenceUID == study + ".2"
    assert ds.PatientID == "X1"


def test_invalid_inputs_are_rejected(volume: np.ndarray, tmp_path: Path) -> None:
    protocol = preset("T2")
    with pytest.raises(ValueError, match="3-D array"):
        write_series(volume[0], SPACING, protocol, tmp_path)
    with pytest.raises(ValueError, match="spacing"):
        write_series(volume, (1.0, 0.0, 1.0), protocol, tmp_path)
    with pytest.raises(ValueError, match="bits"):
        write_series(volume, SPACING, protocol, tmp_path, bits=20)
    with pytest.raises(ValueError, match="finite"):
        write_series(np.full((2, 2, 2), np.nan), SPACING, protocol, tmp_path)
    with pytest.raises(ValueError, match="sex"):
        PatientInfo(sex="X")


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


@pytest.mark.external
@pytest.mark.skipif(shutil.which(DCIODVFY) is None, reason="dicom3tools (dciodvfy) not installed")
@pytest.mark.parametrize("name", ["T1", "T1SE", "T2", "PD", "FLAIR"])
def test_dciodvfy_reports_no_errors(volume: np.ndarray, tmp_path: Path, name: str) -> None:
    protocol: MRProtocol = preset(name, 1.5 if name in ("T1SE", "PD") else 3.0)
    small = volume / 400.0  # values below 1 need a LINEAR_EXACT window
    classic = write_series(small, SPACING, protocol, tmp_path / "c", seed=8)
    [enhanced] = write_series(small, SPACING, protocol, tmp_path / "e", seed=8, enhanced=True)
    assert _dciodvfy_errors(classic[0]) == []
    assert _dciodvfy_errors(enhanced) == []


# -- rtfsyn simulate ---------------------------------------------------------
@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny subject written by the CLI as DICOM and as NIfTI (phantom cached once)."""
    from dicom_node.cli import main

    root = tmp_path_factory.mktemp("simulate")
    common = ["--subjects", "1", "--seed", "11", "--crop", "24", "--cache-dir", str(root / "cache"),
              "--contrasts", "T1,T2,FLAIR"]
    assert main(["simulate", str(root / "dicom"), "--format", "dicom", *common]) == 0
    assert main(["simulate", str(root / "nifti"), "--format", "nifti", "--effects",
                 "thick_slices", *common]) == 0
    return root


def test_cli_empty_cache_dir_means_no_cache_not_the_current_folder() -> None:
    import argparse

    from dicom_node.commands import simulate

    parser = argparse.ArgumentParser()
    simulate.add_parser(parser.add_subparsers())
    assert parser.parse_args(["simulate", "out", "--cache-dir", ""]).cache_dir is None
    assert parser.parse_args(["simulate", "out", "--cache-dir", "c"]).cache_dir == Path("c")
    assert parser.parse_args(["simulate", "out"]).cache_dir is None


def test_cli_dicom_series_share_one_study_and_stack(simulated: Path) -> None:
    subject = simulated / "dicom" / "sub-0011"
    assert sorted(p.name for p in subject.iterdir()) == ["FLAIR", "T1", "T2"]
    studies, frames, series = set(), set(), set()
    for folder in subject.iterdir():
        datasets = _read_sorted(folder)
        assert len(datasets) == 24
        studies.add(datasets[0].StudyInstanceUID)
        frames.add(datasets[0].FrameOfReferenceUID)
        series.add(datasets[0].SeriesInstanceUID)
        z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        np.testing.assert_allclose(np.diff(z), 1.0)
        assert _stack(datasets).shape == (24, 24, 24)
        assert datasets[0].PatientID == "SIM0000011"
    assert len(studies) == 1 and len(frames) == 1 and len(series) == 3


def test_cli_nifti_with_protocol_json(simulated: Path) -> None:
    import nibabel as nib

    nifti = simulated / "nifti"
    meta = json.loads((nifti / "sub-0011_T1.json").read_text())
    assert meta["role"] == "source" and meta["seed"] == 11
    assert meta["effects"]["slice_thickness_mm"] == 5.0 and meta["spacing_mm"] == [5.0, 1.0, 1.0]
    assert meta["protocol"]["contrast"] == "T1w" and meta["protocol"]["slice_thickness_mm"] == 5.0
    image = nib.load(nifti / "sub-0011_T1.nii.gz")
    assert image.shape == (24, 24, 5)  # (x, y, z) on disk
    np.testing.assert_allclose(image.header.get_zooms(), (1.0, 1.0, 5.0))
    target = json.loads((nifti / "sub-0011_FLAIR.json").read_text())
    assert target["role"] == "target" and target["protocol"]["contrast"] == "FLAIR"
    assert nib.load(nifti / "sub-0011_FLAIR.nii.gz").shape == (24, 24, 24)


def test_cli_is_deterministic_by_seed(simulated: Path) -> None:
    from dicom_node.cli import main

    again = simulated / "again"
    assert main(["simulate", str(again), "--format", "dicom", "--subjects", "1", "--seed", "11",
                 "--crop", "24", "--cache-dir", str(simulated / "cache"),
                 "--contrasts", "T1,T2,FLAIR"]) == 0
    for name in ("T1", "FLAIR"):
        first = _read_sorted(simulated / "dicom" / "sub-0011" / name)
        second = _read_sorted(again / "sub-0011" / name)
        assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in second]
        np.testing.assert_array_equal(_stack(first), _stack(second))
        assert first[0].RepetitionTime == second[0].RepetitionTime


def test_cli_rejects_an_unknown_severity(tmp_path: Path) -> None:
    from dicom_node.cli import main

    assert main(["simulate", str(tmp_path), "--effects", "nonsense", "--crop", "8",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
