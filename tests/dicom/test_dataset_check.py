"""Defect 10 of issue 11: a truncated data set, or a Pixel Data length that lies, is refused
with 0xC000 by both receivers; the structure walk (dicom_node.dataset_check) on every
transfer syntax the node accepts, whole and damaged."""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, RLELossless)

from dicom_node.dicom.dataset_check import data_set_offset, data_set_problem
from dicom_node.dicom.status import Status
from tests.helpers.dicom_factory import make_series
from tests.helpers.node import wait_for
from tests.net.helpers import RawPeer, ScpNode, data_set_bytes, files_in, rq

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]


def _instance(folder: Path, syntax: str) -> Path:
    """An MR instance with a nested sequence of undefined length, in ``syntax``."""
    path = make_series(folder, np.random.default_rng(5).uniform(0, 900, (1, 32, 32)))[0]
    ds = dcmread(path)
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.3", "1.2.3.4"
    ds.ReferencedImageSequence = Sequence([item])
    ds.ReferencedImageSequence.is_undefined_length = True
    if syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    out = folder / f"{syntax}.dcm"
    if syntax == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID, ds.preamble = syntax, bytes(128)
        dcmwrite(out, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    else:
        ds.save_as(out, enforce_file_format=True)
    return out


def _pixel_length_at(raw: bytes, syntax: str) -> int:
    """Offset of the 4-byte length of the top-level (7FE0,0010) in a Part 10 file."""
    tag = struct.pack(">HH" if syntax == ExplicitVRBigEndian else "<HH", 0x7FE0, 0x0010)
    at = raw.rindex(tag)
    return at + 4 if syntax == ImplicitVRLittleEndian else at + 8


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_whole_data_sets_pass_and_damaged_ones_are_named(tmp_path: Path, syntax: str) -> None:
    path = _instance(tmp_path, syntax)
    raw = path.read_bytes()
    assert data_set_problem(syntax, path=path) is None
    assert data_set_problem(syntax, encoded=raw) is None
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[:-40])
    assert "not whole" in (data_set_problem(syntax, path=cut) or "") or \
        "cannot be" in (data_set_problem(syntax, path=cut) or "")
    if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        at = _pixel_length_at(raw, syntax)
        fmt = ">I" if syntax == ExplicitVRBigEndian else "<I"
        for lie in (struct.unpack_from(fmt, raw, at)[0] + 2, 100):  # longer, and shorter
            lying = bytearray(raw)
            struct.pack_into(fmt, lying, at, lie)
            assert data_set_problem(syntax, encoded=bytes(lying)) is not None, lie


def test_the_walk_uses_the_head_kept_in_memory(tmp_path: Path) -> None:
    path = _instance(tmp_path, ExplicitVRLittleEndian)
    raw = path.read_bytes()
    offset = data_set_offset(raw)
    missing = tmp_path / "missing.dcm"  # never opened when the head holds everything
    assert data_set_problem(ExplicitVRLittleEndian, path=missing, head=raw[offset:],
                            offset=offset, size=len(raw)) is None


# -- through both receivers ----------------------------------------------------------------
@pytest.fixture(params=["native", "pynetdicom"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ScpNode]:
    node = ScpNode(tmp_path, receiver=request.param)
    yield node
    node.scp.stop(grace_seconds=1)


def test_truncated_data_set_or_lying_pixel_length_is_refused(running: ScpNode,
                                                            tmp_path: Path) -> None:
    path = make_series(tmp_path / "src", np.random.default_rng(2).uniform(0, 900,
                                                                          (3, 64, 64)))
    datasets = [data_set_bytes(p) for p in path]
    (whole, uid_ok, _), (cut, uid_cut, _), (lying, uid_lie, _) = datasets
    lying = bytearray(lying)
    at = lying.rindex(struct.pack("<HH", 0x7FE0, 0x0010)) + 8
    struct.pack_into("<I", lying, at, struct.unpack_from("<I", lying, at)[0] + 1000)
    with RawPeer(running.port) as peer:
        explicit = (3, "1.2.840.10008.5.1.4.1.1.4", (str(ExplicitVRLittleEndian),))
        assert peer.associate(rq(explicit))[0] == 0x02
        assert peer.store(3, cut[:-500], uid_cut) == Status.CANNOT_UNDERSTAND
        assert peer.store(3, bytes(lying) + bytes(200), uid_lie) == Status.CANNOT_UNDERSTAND
        assert peer.store(3, whole, uid_ok) == Status.SUCCESS
    assert [r.sop_instance_uid for r in running.instances()] == [uid_ok]
    temp = running.config.node.data_dir / "tmp"
    wait_for(lambda: files_in(temp) == [], what="no temporary file left")
    assert dcmread(io.BytesIO(whole), force=True).SOPInstanceUID == uid_ok
