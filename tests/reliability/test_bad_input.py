"""Bad input over DICOM: each case gets a DICOM failure status or a recorded rejection with a
reason in the job log (``rtfsyn status --json``), and the node keeps serving: after every
case it answers C-ECHO and processes and delivers a good series."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless,
                         RLELossless, UID)
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select

from tests.helpers.dicom_factory import make_enhanced
from dicom_node.store import db
from tests.helpers.node import make_ct_file, send_files
from tests.reliability.figures import input_tried
from tests.helpers.pdus import read_pdu
from tests.reliability.helpers import (RelNode, associate_rq_pdu, connection_closed, raw_connect,
                                       received_by, series_uid_of, small_series)


def send_raw(files: list[Path], port: int) -> list[int]:
    """C-STORE files byte for byte (not decoded and re-encoded): one presentation context
    per (SOP class, transfer syntax) found in their file meta; the statuses."""
    pairs = []
    for path in files:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    ae = AE(ae_title="SCU")
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="RTFSYN")
    try:
        if not assoc.is_established:
            raise ConnectionRefusedError("association refused")
        return [int(assoc.send_c_store(path).get("Status", 0xFFFF)) for path in files]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()


def _rejected_with_reason(node: RelNode, files: list[Path], statuses: list[int]) -> str:
    """The series was refused by a failure status, or its job/series records a reason."""
    if any(s != 0 for s in statuses):
        return f"C-STORE status 0x{max(statuses):04X}"
    uid = series_uid_of(files[0])
    series = node.wait_series(uid, {"routed", "not_eligible", "ignored", "partial"})
    if series["state"] != "routed":
        assert series["reason"], series
        return f"series {series['state']}: {series['reason']}"
    jobs = node.wait_jobs_final(uid)
    assert [j["state"] for j in jobs] == ["rejected"], jobs
    assert jobs[0]["reason"], jobs
    return f"job rejected: {jobs[0]['reason']}"


def _send_and_expect_rejection(node: RelNode, pacs: Any, tmp_path: Path, case: str,
                               files: list[Path], expected: str) -> None:
    statuses = send_files(files, node.port)
    outcome = _rejected_with_reason(node, files, statuses)
    assert expected in outcome, outcome
    input_tried(case, outcome[:90])
    node.assert_serving(pacs, tmp_path)


def test_non_dicom_bytes_on_the_socket(shared_node: RelNode, module_pacs: Any,
                                       tmp_path: Path) -> None:
    sock = raw_connect(shared_node.port)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
        assert connection_closed(sock, timeout=30.0), "the node must drop a non-DICOM peer"
    finally:
        sock.close()
    input_tried("non-DICOM bytes on the socket", "connection dropped (A-ABORT)")
    shared_node.assert_serving(module_pacs, tmp_path)


def test_non_dicom_data_set_in_a_c_store(shared_node: RelNode, module_pacs: Any,
                                         tmp_path: Path) -> None:
    good = small_series(tmp_path / "src", n_slices=2)[0]
    raw = good.read_bytes()
    ds = pydicom.dcmread(good)
    meta_end = 132 + len(_meta_bytes(ds))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:meta_end] + b"\xde\xad\xbe\xef" * 64)
    statuses = send_raw([garbage], shared_node.port)
    assert statuses[0] & 0xF000 in (0xA000, 0xC000), f"0x{statuses[0]:04X}"
    input_tried("non-DICOM data set in a C-STORE", f"C-STORE status 0x{statuses[0]:04X}")
    shared_node.assert_serving(module_pacs, tmp_path)


def _meta_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info

    buf = BytesIO()
    write_file_meta_info(buf, ds.file_meta, enforce_standard=True)
    return buf.getvalue()


def test_truncated_data_set_in_a_c_store(shared_node: RelNode, module_pacs: Any,
                                         tmp_path: Path) -> None:
    files = small_series(tmp_path / "src")
    for path in files:  # every slice loses the second half of its pixel data
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 24 * 24])
    statuses = send_raw(files, shared_node.port)
    outcome = _rejected_with_reason(shared_node, files, statuses)
    input_tried("truncated data sets (pixel data cut)", outcome[:90])
    shared_node.assert_serving(module_pacs, tmp_path)


def test_missing_geometry_tags(shared_node: RelNode, module_pacs: Any, tmp_path: Path) -> None:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        files = small_series(tmp_path / keyword,
                             mutate=lambda ds, k, kw=keyword: delattr(ds, kw))
        statuses = send_files(files, shared_node.port)
        outcome = _rejected_with_reason(shared_node, files, statuses)
        assert keyword in outcome, outcome
        input_tried(f"missing {keyword}", outcome[:90])
    shared_node.assert_serving(module_pacs, tmp_path)


def test_mixed_orientations(shared_node: RelNode, module_pacs: Any, tmp_path: Path) -> None:
    def tilt(ds: Dataset, k: int) -> None:
        if k % 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43588989]
    _send_and_expect_rejection(shared_node, module_pacs, tmp_path, "mixed orientations",
                               small_series(tmp_path / "src", mutate=tilt), "orientation")


def test_irregular_slice_spacing(shared_node: RelNode, module_pacs: Any, tmp_path: Path) -> None:
    def shift(ds: Dataset, k: int) -> None:
        if k == 3:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 0.9]
    files = small_series(tmp_path / "src", mutate=shift)
    statuses = send_files(files, shared_node.port)
    outcome = _rejected_with_reason(shared_node, files, statuses)
    input_tried("irregular slice spacing", outcome[:90])
    shared_node.assert_serving(module_pacs, tmp_path)


def test_single_slice_series(shared_node: RelNode, module_pacs: Any, tmp_path: Path) -> None:
    _send_and_expect_rejection(shared_node, module_pacs, tmp_path, "single-slice series",
                               small_series(tmp_path / "src", n_slices=1), "slice")


def test_two_series_interleaved_on_one_association(shared_node: RelNode, module_pacs: Any,
                                                   tmp_path: Path) -> None:
    a = small_series(tmp_path / "a", seed=1)
    b = small_series(tmp_path / "b", seed=2)
    interleaved = [f for pair in zip(a, b) for f in pair]
    assert set(send_files(interleaved, shared_node.port)) == {0}
    for files in (a, b):
        uid = series_uid_of(files[0])
        jobs = shared_node.wait_jobs_final(uid)
        assert [j["state"] for j in jobs] == ["done"], jobs
        assert shared_node.series(uid)["n_instances"] == len(files)
        got = received_by(module_pacs, jobs[0]["derived_series_uid"])
        n = jobs[0]["n_derived"]
        assert n > 0 and got == (n, n), f"(received, distinct) = {got}, derived {n}"
    input_tried("two series interleaved on one association", "both processed and delivered")
    shared_node.assert_serving(module_pacs, tmp_path)


def test_duplicate_sop_instance_uids_are_idempotent(shared_node: RelNode, module_pacs: Any,
                                                    tmp_path: Path) -> None:
    files = small_series(tmp_path / "src")
    before = shared_node.status()["instances"]
    assert set(send_files(files + files[:3], shared_node.port)) == {0}
    uid = series_uid_of(files[0])
    jobs = shared_node.wait_jobs_final(uid)
    assert set(send_files(files, shared_node.port)) == {0}  # the whole series again
    after = shared_node.status()["instances"]
    assert after["total"] - before["total"] == len(files)
    assert after["duplicates"] - before["duplicates"] == 3 + len(files)
    assert [j["state"] for j in jobs] == ["done"]
    shared_node.wait_series(uid, {"routed"})
    assert len(shared_node.jobs_of(uid)) == 1, "duplicates must not create another job"
    input_tried("duplicate SOP Instance UIDs", "success; counted once; one job")
    shared_node.assert_serving(module_pacs, tmp_path)


def test_non_mr_modality(shared_node: RelNode, module_pacs: Any, tmp_path: Path) -> None:
    ct = make_ct_file(tmp_path / "ct")
    assert send_files([ct], shared_node.port) == [0]
    series = shared_node.wait_series(series_uid_of(ct), {"not_eligible", "ignored"})
    assert "not eligible" in series["reason"] or "no route" in series["reason"], series
    input_tried("non-MR modality (CT)", f"series {series['state']}: {series['reason']}")
    files = small_series(tmp_path / "mr-labelled-ot",
                         mutate=lambda ds, k: setattr(ds, "Modality", "OT"))
    statuses = send_files(files, shared_node.port)
    outcome = _rejected_with_reason(shared_node, files, statuses)
    input_tried("MR storage class, Modality OT", outcome[:90])
    shared_node.assert_serving(module_pacs, tmp_path)


COMPRESSED = [("deflate", DeflatedExplicitVRLittleEndian), ("RLE", RLELossless),
              ("JPEG-LS", JPEGLSLossless), ("JPEG 2000", JPEG2000Lossless)]


@pytest.mark.parametrize("name,syntax", COMPRESSED, ids=[c[0] for c in COMPRESSED])
def test_compressed_transfer_syntaxes_are_decoded(shared_node: RelNode, module_pacs: Any,
                                                  tmp_path: Path, name: str, syntax: UID) -> None:
    files = small_series(tmp_path / "src", size=32)  # JPEG 2000 needs >= 32 px per side
    if syntax != DeflatedExplicitVRLittleEndian:
        for path in files:
            ds = pydicom.dcmread(path)
            ds.compress(syntax)
            ds.save_as(path, enforce_file_format=True)
    else:
        for path in files:
            ds = pydicom.dcmread(path)
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(path, enforce_file_format=True)
    assert str(pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID) == syntax
    assert set(send_raw(files, shared_node.port)) == {0}
    jobs = shared_node.wait_jobs_final(series_uid_of(files[0]))
    assert [j["state"] for j in jobs] == ["done"], jobs
    n = jobs[0]["n_derived"]
    assert received_by(module_pacs, jobs[0]["derived_series_uid"]) == (n, n)
    input_tried(f"compressed: {name}", "decoded, synthesized, delivered")


def test_unsupported_transfer_syntax_is_refused_at_negotiation(shared_node: RelNode,
                                                               module_pacs: Any,
                                                               tmp_path: Path) -> None:
    htj2k = "1.2.840.10008.1.2.4.201"  # High-Throughput JPEG 2000 (lossless only)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage, [htj2k])
    assoc = ae.associate("127.0.0.1", shared_node.port, ae_title="RTFSYN")
    try:
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == MRImageStorage]
    finally:
        if assoc.is_established:
            assoc.release()
    assert accepted == [], "HTJ2K is not decodable here and must be refused"
    input_tried("unsupported transfer syntax (HTJ2K)", "presentation context rejected")
    shared_node.assert_serving(module_pacs, tmp_path)


def test_enhanced_mr_multiframe_is_processed(shared_node: RelNode, module_pacs: Any,
                                             tmp_path: Path) -> None:
    import numpy as np

    volume = np.random.default_rng(5).uniform(0, 1000, size=(8, 24, 24))
    path = make_enhanced(tmp_path / "enh", volume)
    assert send_files([path], shared_node.port) == [0]
    jobs = shared_node.wait_jobs_final(series_uid_of(path))
    assert [j["state"] for j in jobs] == ["done"], jobs
    input_tried("Enhanced MR multi-frame", f"processed: {jobs[0]['n_derived']} derived")


@pytest.mark.parametrize("case,mutate,expect", [
    ("negative TR", lambda ds, k: setattr(ds, "RepetitionTime", "-2300"), None),
    ("TE > TR", lambda ds, k: (setattr(ds, "RepetitionTime", "50"),
                               setattr(ds, "EchoTime", "400")), None),
    ("NaN spacing", lambda ds, k: setattr(ds, "PixelSpacing", ["NaN", "1.0"]), "PixelSpacing"),
], ids=["negative-TR", "TE-gt-TR", "NaN-spacing"])
def test_absurd_tag_values(shared_node: RelNode, module_pacs: Any, tmp_path: Path, case: str,
                           mutate: Any, expect: str | None) -> None:
    files = small_series(tmp_path / "src", mutate=mutate)
    statuses = send_files(files, shared_node.port)
    uid = series_uid_of(files[0])
    if expect is None:  # absurd timing values are dropped (logged), the rest still works
        assert set(statuses) == {0}
        jobs = shared_node.wait_jobs_final(uid)
        assert jobs[0]["state"] in ("done", "rejected") and (
            jobs[0]["state"] == "done" or jobs[0]["reason"]), jobs
        outcome = (f"job {jobs[0]['state']}" + (f": {jobs[0]['reason']}"
                                                 if jobs[0]["reason"] else " (value dropped)"))
    else:
        outcome = _rejected_with_reason(shared_node, files, statuses)
        assert expect in outcome, outcome
    input_tried(f"absurd tag: {case}", outcome[:90])
    shared_node.assert_serving(module_pacs, tmp_path)


def test_synthetic_series_hits_the_loop_guard(shared_node: RelNode, module_pacs: Any,
                                              tmp_path: Path) -> None:
    files = small_series(tmp_path / "src", mutate=lambda ds, k: setattr(ds, "SyntheticData",
                                                                         "YES"))
    assert set(send_files(files, shared_node.port)) == {0}
    series = shared_node.wait_series(series_uid_of(files[0]), {"not_eligible", "routed"})
    assert series["state"] == "not_eligible" and "loop guard" in series["reason"], series
    input_tried("synthetic series (loop guard)", f"not_eligible: {series['reason']}"[:90])
    shared_node.assert_serving(module_pacs, tmp_path)


def test_associate_then_raw_garbage(shared_node: RelNode, module_pacs: Any,
                                    tmp_path: Path) -> None:
    sock = raw_connect(shared_node.port)
    try:
        sock.sendall(associate_rq_pdu())
        assert read_pdu(sock)[0] == 0x02, "the raw A-ASSOCIATE-RQ must be accepted"
        sock.sendall(b"\x04\x00\x00\x00\x00\x08" + b"\xff" * 8)  # a P-DATA-TF with a bad item
        assert connection_closed(sock, timeout=30.0)
    finally:
        sock.close()
    input_tried("malformed P-DATA-TF after association", "connection aborted")
    shared_node.assert_serving(module_pacs, tmp_path)


def test_sop_instance_uid_reused_in_another_series_is_refused(shared_node: RelNode,
                                                             module_pacs: Any,
                                                             tmp_path: Path) -> None:
    files = small_series(tmp_path / "a")
    assert set(send_files(files, shared_node.port)) == {0}
    uid = series_uid_of(files[0])
    jobs = shared_node.wait_jobs_final(uid)
    clash = pydicom.dcmread(files[0])
    original = str(clash.SOPInstanceUID)
    clash.SeriesInstanceUID = pydicom.uid.generate_uid()  # same SOP UID, another series
    clash.PixelData = bytes(len(clash.PixelData))
    path = tmp_path / "clash.dcm"
    clash.save_as(path, enforce_file_format=True)
    statuses = send_files([path], shared_node.port)
    assert statuses == [0x0111], f"expected Duplicate SOP Instance. Found {statuses}"
    with shared_node.node.log.session() as s:
        row = s.scalar(select(db.Instance).where(db.Instance.sop_instance_uid == original))
        assert row.series_uid == uid and Path(row.path).read_bytes()[-64:] != bytes(64)
    copies = list(shared_node.node.spool.root.rglob(f"{original}.dcm"))
    assert copies == [Path(row.path)], f"the refused copy must not stay in the spool: {copies}"
    assert len(shared_node.jobs_of(uid)) == 1 and jobs[0]["state"] == "done"
    input_tried("SOP Instance UID reused in another series",
                "C-STORE 0x0111; original kept, refused copy not spooled")
    shared_node.assert_serving(module_pacs, tmp_path)
