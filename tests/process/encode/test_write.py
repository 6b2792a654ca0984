"""Writing the derived series (dicom_node.process.encode.write): the template-encoded files hold the
bytes pydicom writes for the whole datasets, and the read-back refuses a file that is not
what was meant."""
from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest

from tests.helpers.dicom_factory import T2_TSE, make_series
from dicom_node.process.assemble import assemble_series
from dicom_node.process.encode.provenance import NodeInfo, Provenance
from dicom_node.process.encode.classic_mr import MRSeries, OutputGrid, build_mr_series
from dicom_node.dicom.elements import file_meta
from dicom_node.process.encode.write import verify_file, write_mr_series
from dicom_node.errors import DerivedSeriesError
from synthesis.protocol import preset


def _utf8_patient(ds: pydicom.Dataset, k: int) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Zoë"
    ds.StudyDescription = "Schädel nativ"


def _series(tmp_path: Path) -> MRSeries:
    assembled = assemble_series(make_series(tmp_path / "src", spacing=(1.5, 1.0, 1.0),
                                            tags=T2_TSE, mutate=_utf8_patient))
    now = datetime.now(timezone.utc).astimezone()
    provenance = Provenance.build({"model_name": "RTFSyn", "model_version": "test"},
                                  prompt="a prompt", target=preset("T2"), source=None,
                                  node=NodeInfo(), when=now,
                                  source_equipment={"Manufacturer": "ACME"})
    grid = OutputGrid.from_result(assembled, assembled.spacing, (0.0, 0.0, 0.0))
    volume = assembled.volume / float(assembled.volume.max())
    return build_mr_series(volume, assembled, preset("T2"), grid, provenance=provenance,
                           series_uid="1.2.826.0.1.3680043.8.498.1", series_number=1001,
                           description="SYN T2w (RTFSyn) test", now=now)


def test_files_hold_what_pydicom_writes_for_the_whole_datasets(tmp_path: Path) -> None:
    series = _series(tmp_path)
    (tmp_path / "out").mkdir()
    paths = write_mr_series(series, tmp_path / "out", "SYN")
    assert len(paths) == len(series) > 1
    for k, path in enumerate(paths):
        whole = series.dataset(k)
        whole.file_meta = file_meta(str(whole.SOPClassUID), str(whole.SOPInstanceUID))
        expected = io.BytesIO()
        whole.save_as(expected, enforce_file_format=True)
        assert path.read_bytes() == expected.getvalue()
    back = pydicom.dcmread(paths[0])
    assert str(back.PatientName) == "Müller^Zoë" and back.StudyDescription == "Schädel nativ"
    assert len(back.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(series)
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID


@pytest.mark.parametrize("damage", ["truncated", "pixel", "uid"])
def test_read_back_refuses_a_file_that_is_not_what_was_meant(tmp_path: Path,
                                                             damage: str) -> None:
    series = _series(tmp_path)
    (tmp_path / "out").mkdir()
    path = write_mr_series(series, tmp_path / "out", "SYN")[0]
    sop_class = str(series.template.SOPClassUID)
    sop_instance = str(series.slices[0].SOPInstanceUID)
    pixels = series.pixels[0]
    verify_file(path, sop_class, sop_instance, pixels)  # as written: accepted
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-100])
        expected_error = "not a complete DICOM instance"
    elif damage == "pixel":
        pixels = pixels.copy()
        pixels[0, 0] += 1
        expected_error = "pixel data read back differ"
    else:
        sop_instance += ".9"
        expected_error = "UID changed on read-back"
    with pytest.raises(DerivedSeriesError, match=expected_error):
        verify_file(path, sop_class, sop_instance, pixels)
    with pytest.raises(DerivedSeriesError, match="differs from what was written"):
        verify_file(path, sop_class, sop_instance, pixels, expected=data + b"\0\0")
