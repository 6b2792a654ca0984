"""The C-STORE header attributes read from the first bytes of a data set: same values as
``dcmread``, or "read the file" (None) whenever the bytes do not settle it."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         MRImageStorage)

from dicom_node.dicom.header import StoreHeader, parse_head, read_header

LITTLE_ENDIAN = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
# padded UIDs and random bytes are the point of some tests: pydicom's warnings about them
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning",
                                        "ignore:Found unknown escape sequence:UserWarning")


def _base() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 AX"
    ds.SeriesNumber = 7
    ds.PatientName = "NOT^LOGGED"
    ds.Rows, ds.Columns, ds.BitsAllocated = 4, 4, 16
    ds.PixelData = bytes(32)
    return ds


def _nested(undefined: bool) -> Sequence:
    inner = Dataset()
    inner.ReferencedSOPClassUID = MRImageStorage
    inner.ReferencedSOPInstanceUID = "1.2.3.4.9"
    deeper = Dataset()
    deeper.CodeValue = "121322"
    inner.PurposeOfReferenceCodeSequence = Sequence([deeper])
    for item in (inner, deeper):
        item.is_undefined_length_sequence_item = undefined
    return Sequence([inner, Dataset()])


def _with_sequences(undefined: bool) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.ReferencedImageSequence = _nested(undefined)
        ds.SourceImageSequence = _nested(undefined)
        for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
            ds[keyword].is_undefined_length = undefined
            for item in ds[keyword].value:
                if "PurposeOfReferenceCodeSequence" in item:
                    item["PurposeOfReferenceCodeSequence"].is_undefined_length = undefined
    return change


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return change


def _private(ds: Dataset) -> None:
    block = ds.private_block(0x0019, "RTFSYN TEST", create=True)
    block.add_new(0x10, "LO", "private text")
    block.add_new(0x11, "OB", bytes(3000))


def _raw_padding(ds: Dataset) -> None:
    ds.add(DataElement(0x0008103E, "LO", b"PADDED \x00"))
    ds.add(DataElement(0x00200011, "IS", b" 12 "))
    ds.add(DataElement(0x0020000E, "UI", b"1.2.3.4\x00"))


VARIANTS: dict[str, Callable[[Dataset], None]] = {
    "plain": lambda ds: None,
    "no modality, description or number": _set(Modality=None, SeriesDescription=None,
                                                SeriesNumber=None),
    "no SOP class": _set(SOPClassUID=None),
    "no series UID": _set(SeriesInstanceUID=None),
    "empty values": _set(Modality="", SeriesDescription="", SeriesNumber=None),
    "UTF-8 description": _set(SpecificCharacterSet="ISO_IR 192",
                              SeriesDescription="Kopf T2 größer"),
    "Latin-1 description": _set(SpecificCharacterSet="ISO_IR 100", SeriesDescription="tête"),
    "sequences, undefined length": _with_sequences(True),
    "sequences, defined length": _with_sequences(False),
    "private elements": _private,
    "padding": _raw_padding,
    "multi-valued modality": _set(Modality=["MR", "OT"]),
}


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    fp.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def _file(tmp_path: Path, ds: Dataset, transfer_syntax: str, body: bytes) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(bytes(128) + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    path = tmp_path / "file.dcm"
    path.write_bytes(fp.getvalue() + body)
    return path


@pytest.mark.parametrize("transfer_syntax", [*LITTLE_ENDIAN, JPEG2000Lossless])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_head_gives_what_dcmread_gives(tmp_path: Path, variant: str,
                                       transfer_syntax: str) -> None:
    ds = _base()
    VARIANTS[variant](ds)
    body = _encode(ds, transfer_syntax)
    expected = read_header(_file(tmp_path, ds, transfer_syntax, body))
    assert parse_head(body, transfer_syntax) == expected
    assert parse_head(body[:-len(ds.PixelData) - 8], transfer_syntax, complete=True) in (
        expected, None)


def test_values_are_decoded() -> None:
    ds = _base()
    _raw_padding(ds)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "MR"
    header = parse_head(_encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert header == StoreHeader(sop_class_uid=MRImageStorage, study_uid="1.2.3",
                                 series_uid="1.2.3.4", modality="MR", description="PADDED",
                                 series_number=12)


@pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
def test_a_prefix_that_stops_early_means_read_the_file(transfer_syntax: str) -> None:
    ds = _base()
    _with_sequences(True)(ds)
    body = _encode(ds, transfer_syntax)
    end = body.index(b"1.2.3.4\x00") if b"1.2.3.4\x00" in body else len(body) // 2
    for cut in range(0, end, 7):
        assert parse_head(body[:cut], transfer_syntax) is None
    assert parse_head(body, transfer_syntax) is not None


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_encodings_are_left_to_dcmread(transfer_syntax: str) -> None:
    body = _encode(_base(), ExplicitVRLittleEndian)
    assert parse_head(body, transfer_syntax) is None


def test_complete_data_set_without_series_number() -> None:
    ds = _base()
    for keyword in ("SeriesNumber", "Rows", "Columns", "BitsAllocated", "PixelData"):
        delattr(ds, keyword)
    body = _encode(ds, ExplicitVRLittleEndian)
    assert parse_head(body, ExplicitVRLittleEndian) is None  # may continue in the file
    header = parse_head(body, ExplicitVRLittleEndian, complete=True)
    assert header is not None and header.series_number is None and header.modality == "MR"


@pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
def test_arbitrary_bytes_never_raise(transfer_syntax: str) -> None:
    rng = random.Random(3)
    body = _encode(_base(), transfer_syntax)
    for _ in range(3000):
        data = bytearray(body[:400])
        for _flip in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        parse_head(bytes(data), transfer_syntax)  # None or a header, never an exception
        parse_head(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))),
                   transfer_syntax)
