"""Interoperability with real peers: dcmtk ``storescu``/``echoscu`` sending to the node in
nine transfer syntaxes (each compressed one proposed in a context of its own, as storescu
does), pynetdicom as SCU, the maximum PDU length negotiated both ways (the node receiving
from storescu, the node's requestor sending to dcmtk ``storescp``) and an asynchronous
operations window refused cleanly. Test files are made with dcmtk's own tools
(``dcmconv``, ``dcmcrle``, ``dcmcjpls``, ``dcmcjpeg``) and pydicom with pylibjpeg-openjpeg
(JPEG 2000)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, MRImageStorage,
                         RLELossless)
from pynetdicom import AE
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation

from dicom_node.net.requestor import Requestor
from tests.helpers.dicom_factory import make_series
from tests.helpers.node import free_port, wait_for
from tests.helpers.peers import dcmtk_env
from tests.net.helpers import ScpNode, data_set_bytes

DCMTK = Path("/usr/bin")  # dcmtk's tools (pynetdicom installs Python apps of the same names)
TOOLS = ("storescu", "echoscu", "storescp", "dcmconv", "dcmcrle", "dcmcjpls", "dcmcjpeg")
pytestmark = pytest.mark.skipif(not all((DCMTK / t).is_file() for t in TOOLS),
                                reason="dcmtk is not installed")

# transfer syntax -> how a test file is made from an Explicit VR Little Endian one
CONVERSIONS = {
    ImplicitVRLittleEndian: ["dcmconv", "+ti"],
    ExplicitVRLittleEndian: None,
    ExplicitVRBigEndian: ["dcmconv", "+tb"],
    DeflatedExplicitVRLittleEndian: ["dcmconv", "+td"],
    RLELossless: ["dcmcrle"],
    JPEGLSLossless: ["dcmcjpls"],
    JPEGLosslessSV1: ["dcmcjpeg"],
    JPEGBaseline8Bit: ["dcmcjpeg", "+eb"],
    JPEG2000Lossless: "pydicom",
}


# transfer syntax -> storescu's option proposing it (dcmtk proposes it in a context of its own)
PROPOSE = {
    str(ImplicitVRLittleEndian): ["--propose-implicit"],
    str(ExplicitVRLittleEndian): [],
    str(ExplicitVRBigEndian): ["--propose-big"],
    str(DeflatedExplicitVRLittleEndian): ["--propose-deflated"],
    str(RLELossless): ["--propose-rle"],
    str(JPEGLSLossless): ["--propose-jls-lossless"],
    str(JPEGLosslessSV1): ["--propose-lossless"],
    str(JPEGBaseline8Bit): ["--propose-jpeg8"],
    str(JPEG2000Lossless): ["--propose-j2k-lossless"],
}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ScpNode]:
    running = ScpNode(tmp_path / "node", max_pdu=4096)
    yield running
    running.scp.stop(grace_seconds=1)


def _convert(source: Path, syntax: str, out: Path) -> Path:
    how = CONVERSIONS[syntax]
    if how is None:
        shutil.copy(source, out)
    elif how == "pydicom":
        ds = dcmread(source)
        ds.compress(syntax)
        ds.save_as(out, enforce_file_format=True)
    else:
        subprocess.run([str(DCMTK / how[0]), *how[1:], str(source), str(out)], check=True,
                       capture_output=True, timeout=60, env=dcmtk_env())
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One MR instance per transfer syntax (8-bit pixels, so JPEG baseline applies too)."""
    folder = tmp_path_factory.mktemp("interop")
    volume = np.random.default_rng(9).uniform(0, 250, (len(CONVERSIONS), 64, 64))
    sources = make_series(folder / "src", volume)
    out = {}
    for (syntax, _how), source in zip(CONVERSIONS.items(), sources):
        ds = dcmread(source)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = ds.pixel_array.clip(0, 255).astype(np.uint8).tobytes()
        eight = folder / f"8bit-{len(out)}.dcm"
        ds.save_as(eight, enforce_file_format=True)
        out[str(syntax)] = _convert(eight, str(syntax), folder / f"ts-{len(out)}.dcm")
        assert dcmread(out[str(syntax)], stop_before_pixels=True).file_meta.TransferSyntaxUID \
            == syntax
    return out


def test_echoscu(node: ScpNode) -> None:
    done = subprocess.run([str(DCMTK / "echoscu"), "-aet", "DCMTK", "-aec", "RTFSYN",
                           "127.0.0.1", str(node.port)], capture_output=True, text=True,
                          timeout=60, env=dcmtk_env())
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("syntax", list(PROPOSE))
def test_storescu_sends_each_transfer_syntax_as_it_is(node: ScpNode,
                                                      files: dict[str, Path],
                                                      syntax: str) -> None:
    """storescu proposes the file's transfer syntax in a context of its own (next to the
    uncompressed ones), the node accepts it, and the data set is spooled as sent (byte for
    byte; a deflated one as storescu deflated it again), in PDUs of at most the node's 4096
    bytes (the node aborts longer ones)."""
    path = files[syntax]
    done = subprocess.run([str(DCMTK / "storescu"), "-d", "--required", *PROPOSE[syntax],
                           "-aet", "DCMTK", "-aec", "RTFSYN", "--max-pdu", "8192", "127.0.0.1",
                           str(node.port), str(path)],
                          capture_output=True, text=True, timeout=120, env=dcmtk_env())
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert re.search(r"Converting transfer syntax: (.+) -> \1\n", log), "sent as it is"
    data, uid, _ts = data_set_bytes(path)
    row = next(r for r in node.instances() if r.sop_instance_uid == uid)
    stored, _uid, stored_ts = data_set_bytes(Path(row.path))
    assert (row.transfer_syntax_uid, stored_ts) == (syntax, syntax)
    if syntax == DeflatedExplicitVRLittleEndian:  # storescu deflates again as it sends
        assert dcmread(row.path) == dcmread(path)
    else:
        assert stored == data


def test_pynetdicom_scu_every_transfer_syntax(node: ScpNode, files: dict[str, Path]) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.maximum_pdu_size = 0  # no limit on what it receives; it sends at most the node's 4096
    for syntax in files:
        ae.add_requested_context(MRImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
    assert assoc.is_established and assoc.acceptor.maximum_length == 4096
    try:
        statuses = [assoc.send_c_store(dcmread(p)).Status for p in files.values()]
    finally:
        assoc.release()
    assert statuses == [0] * len(files)


def test_asynchronous_operations_window_is_answered_1_1(node: ScpNode,
                                                        files: dict[str, Path]) -> None:
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 8
    window.maximum_number_operations_performed = 8
    ae = AE(ae_title="ASYNC")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN", ext_neg=[window])
    try:
        assert assoc.is_established
        assert assoc.acceptor.asynchronous_operations == (1, 1)
        assert assoc.send_c_store(dcmread(files[str(ExplicitVRLittleEndian)])).Status == 0
    finally:
        assoc.release()


def test_requestor_to_storescp_with_a_small_maximum_pdu(tmp_path: Path,
                                                        files: dict[str, Path]) -> None:
    """The node's requestor fragments to the peer's maximum (storescp: 4096 bytes) and
    talks to dcmtk in three transfer syntaxes; storescp keeps the data sets as sent."""
    out, port = tmp_path / "received", free_port()
    out.mkdir()
    proc = subprocess.Popen([str(DCMTK / "storescp"), "--aetitle", "STORESCP",
                             "--output-directory", str(out), "--accept-all", "--max-pdu",
                             "4096", str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sent = [files[s] for s in (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian),
                               str(JPEGLSLossless))]
    try:
        contexts = [(str(MRImageStorage), [data_set_bytes(p)[2]]) for p in sent]
        assoc = wait_for(lambda: _associate(port, contexts), timeout=20, interval=0.2,
                         what="storescp listening")
        assert assoc.peer_max_pdu == 4096
        for path in sent:
            data, uid, syntax = data_set_bytes(path)
            context = assoc.context_for(str(MRImageStorage), [syntax])
            assert context is not None and assoc.c_store(context, uid, data) == 0
        assoc.release()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    received = {data_set_bytes(p)[1]: data_set_bytes(p) for p in out.iterdir()}
    assert {uid: (data, ts) for data, uid, ts in map(data_set_bytes, sent)} == \
        {uid: (data, ts) for data, uid, ts in received.values()}


def _associate(port: int, contexts: list) -> Requestor | None:
    """The node's requestor associated with storescp at ``port`` (None: not listening yet)."""
    try:
        return Requestor.associate("127.0.0.1", port, calling_ae_title="RTFSYN",
                                   called_ae_title="STORESCP", contexts=contexts, timeout=10)
    except OSError:
        return None
