"""Writing the files of a derived series, and reading every one back (DESIGN §4).

* :func:`write_mr_series` writes the classic instances of a
  :class:`~dicom_node.process.encode.classic_mr.MRSeries`. The instances share all but a few
  elements (the template holds the patient, study and series modules, the
  provenance and the Referenced Series Sequence that names every source
  instance), so :class:`TemplateEncoder` encodes the template's elements once,
  with pydicom's own element writer, and each file is those bytes merged in tag
  order with the encoded elements of its own slice: the bytes
  ``Dataset.save_as(path, enforce_file_format=True)`` writes for the whole
  dataset (the tests compare them), without encoding the template again per
  slice.
* :func:`write_and_verify` writes whole datasets with pydicom (the
  single-instance output formats).

Read-back: every file is read back from disk and parsed by pydicom; its file
meta and dataset must carry the SOP Class and Instance UIDs written, and its
decoded pixels must equal the ones meant. :func:`write_mr_series` also checks
that the file holds exactly the bytes encoded.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info

from dicom_node.dicom.elements import file_meta
from dicom_node.errors import DerivedSeriesError
from dicom_node.process.encode.classic_mr import MRSeries

__all__ = ["TemplateEncoder", "write_mr_series", "write_and_verify", "verify_file"]

_PREAMBLE = bytes(128) + b"DICM"


def _encode_element(element: DataElement | RawDataElement,
                    encodings: str | list[str]) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, element, encodings)
    return fp.getvalue()


class TemplateEncoder:
    """Part 10 files (Explicit VR Little Endian) of datasets made of ``template`` plus a
    few elements of their own, the template's elements encoded once.

    ``template`` must not change while the encoder is used; its ambiguous value
    representations are resolved first (as pydicom does before writing).
    """

    def __init__(self, template: Dataset) -> None:
        correct_ambiguous_vr(template, True)
        self._encodings = template.get("SpecificCharacterSet", default_encoding)
        self._shared = {tag: _encode_element(template.get_item(tag), self._encodings)
                        for tag in template.keys() if not _is_group_length(tag)}

    def encode(self, own: Dataset, meta: FileMetaDataset) -> bytes:
        """The file of ``template`` + ``own`` (own's elements win) with ``meta``."""
        parts = dict(self._shared)
        for tag in own.keys():
            if not _is_group_length(tag):
                parts[tag] = _encode_element(own.get_item(tag), self._encodings)
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        out.write(_PREAMBLE)
        write_file_meta_info(out, meta, enforce_standard=True)
        out.write(b"".join(parts[tag] for tag in sorted(parts)))
        return out.getvalue()


def _is_group_length(tag: int) -> bool:
    """Retired group lengths, which pydicom does not write either (PS3.5 7.2)."""
    return (tag & 0xFFFF) == 0 and (tag >> 16) > 6


def _file_name(out_dir: Path, stem: str, k: int, count: int) -> Path:
    return out_dir / (f"{stem}{k + 1:05d}.dcm" if count > 1 else f"{stem}.dcm")


def write_mr_series(series: MRSeries, out_dir: Path, stem: str) -> list[Path]:
    """Write every instance of ``series`` into ``out_dir`` and read each one back."""
    encoder = TemplateEncoder(series.template)
    sop_class = str(series.template.SOPClassUID)
    paths = []
    for k, own in enumerate(series.slices):
        sop_instance = str(own.SOPInstanceUID)
        data = encoder.encode(own, file_meta(sop_class, sop_instance))
        path = _file_name(out_dir, stem, k, len(series))
        path.write_bytes(data)
        verify_file(path, sop_class, sop_instance, series.pixels[k], expected=data)
        paths.append(path)
    return paths


def write_and_verify(datasets: Sequence[Dataset], out_dir: Path, stem: str) -> list[Path]:
    """Save each whole dataset with pydicom, read it back and check it."""
    paths = []
    for k, ds in enumerate(datasets):
        ds.file_meta = file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        path = _file_name(out_dir, stem, k, len(datasets))
        ds.save_as(path, enforce_file_format=True)
        verify_file(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), ds.pixel_array)
        paths.append(path)
    return paths


def verify_file(path: Path, sop_class_uid: str, sop_instance_uid: str, pixels: np.ndarray, *,
                expected: bytes | None = None) -> None:
    """Read ``path`` back: a DICOM file (the ``expected`` bytes, when given) whose file meta
    and dataset name ``sop_class_uid`` and ``sop_instance_uid`` and whose decoded pixels
    equal ``pixels``; raises :class:`DerivedSeriesError` otherwise."""
    data = path.read_bytes()
    if expected is not None and data != expected:
        raise DerivedSeriesError(f"{path.name}: the file read back differs from what was "
                                 f"written ({len(data)} of {len(expected)} bytes)")
    try:
        back = pydicom.dcmread(io.BytesIO(data))
        meta = back.file_meta
        uids = (str(meta.MediaStorageSOPClassUID), str(back.SOPClassUID),
                str(meta.MediaStorageSOPInstanceUID), str(back.SOPInstanceUID))
        found = back.pixel_array
    except (InvalidDicomError, AttributeError, KeyError, ValueError, EOFError) as exc:
        raise DerivedSeriesError(f"{path.name}: not a complete DICOM instance on read-back "
                                 f"({type(exc).__name__}: {exc})") from exc
    if uids != (sop_class_uid, sop_class_uid, sop_instance_uid, sop_instance_uid):
        raise DerivedSeriesError(f"{path.name}: SOP Class or Instance UID changed on read-back")
    if found.shape != pixels.shape or not np.array_equal(found, pixels):
        raise DerivedSeriesError(f"{path.name}: pixel data read back differ from what was "
                                 f"written (shape {found.shape} vs {pixels.shape})")
