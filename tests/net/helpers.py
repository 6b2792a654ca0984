"""Helpers of the network suite: an acceptor with a recording handler, a raw-socket peer that
speaks (or breaks) PS3.8, and C-STORE messages built by hand.

Everything runs on loopback, on ports the operating system picks; every acceptor or node
a test starts is stopped by the test; waits are polled with deadlines.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from dicom_node.net import acceptor as ul
from dicom_node.receive.scp import StorageSCP
from dicom_node.store import db
from dicom_node.store.joblog import JobLog
from dicom_node.store.spool import Spool
from tests.helpers.node import node_config
from dicom_node.net import dimse, pdu

__all__ = ["Recorder", "start_acceptor", "ScpNode", "RawPeer", "SUPPORTED", "store_command",
           "data_set_bytes", "echo_command", "rss_mib", "p_data"]

SUPPORTED = {str(MRImageStorage): frozenset({str(ImplicitVRLittleEndian),
                                              str(ExplicitVRLittleEndian)}),
             str(Verification): frozenset({str(ImplicitVRLittleEndian)})}


class Recorder:
    """An :class:`~dicom_node.net.interface.AssociationHandler` that records what happens
    (and can refuse the association, ``refusal``, or fail its C-STOREs, ``fail_store``)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.stored: dict[str, bytes] = {}
        self.refusal: tuple[int, int, int] | None = None
        self.fail_store = False
        self._cond = threading.Condition()

    def _add(self, *event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait(self, kind: str, timeout: float = 20.0) -> tuple[Any, ...]:
        """The first event of ``kind``, waiting for it up to ``timeout`` s."""
        with self._cond:
            assert self._cond.wait_for(lambda: any(e[0] == kind for e in self.events),
                                       timeout), f"no {kind!r} event in {timeout} s: {self.events}"
            return next(e for e in self.events if e[0] == kind)

    def kinds(self) -> list[str]:
        """The kinds of the events so far, in order."""
        with self._cond:
            return [e[0] for e in self.events]

    def requested(self, assoc: ul.Association) -> tuple[int, int, int] | None:
        self._add("requested", assoc.calling_ae_title, assoc.called_ae_title)
        return self.refusal

    def rejected(self, assoc: ul.Association, rejection: tuple[int, int, int]) -> None:
        self._add("rejected", rejection)

    def released(self, assoc: ul.Association) -> None:
        self._add("released")

    def aborted(self, assoc: ul.Association, cause: ul.AbortCause, detail: str) -> None:
        self._add("aborted", cause, detail)

    def echo(self, assoc: ul.Association) -> int:
        return 0

    def store(self, assoc: ul.Association, instance: ul.ReceivedInstance) -> int:
        if self.fail_store:
            raise RuntimeError("handler failure (test)")
        self.stored[instance.sop_instance_uid] = instance.path.read_bytes()
        self._add("store", instance.sop_instance_uid, instance.transfer_syntax)
        return 0


def start_acceptor(tmp_path: Path, handler: Any, ssl_context: Any = None,
                   **settings: Any) -> ul.Acceptor:
    """A started acceptor on 127.0.0.1 (free port), AE ``RTFSYN``, temporary files in
    ``tmp_path``, ARTIM 1 s (Sta13 waits 1 s); ``settings`` override
    :class:`~dicom_node.net.acceptor.AcceptorSettings` fields."""
    values = {"ae_title": "RTFSYN", "supported": SUPPORTED, "network_timeout": 10.0,
              "artim_timeout": 1.0, "temp_dir": tmp_path, **settings}
    acceptor = ul.Acceptor(("127.0.0.1", 0), ul.AcceptorSettings(**values), handler,
                           ssl_context)
    acceptor.start()
    return acceptor


class ScpNode:
    """The node's StorageSCP (``node`` settings, e.g. ``receiver``) with its job log and
    spool, started; stop it with ``scp.stop``."""

    def __init__(self, tmp_path: Path, **node: Any) -> None:
        self.config = node_config(tmp_path, node=node)
        self.log = JobLog(self.config.database_path)
        self.scp = StorageSCP(self.config, self.log, Spool(self.config.spool_dir))
        self.scp.start()
        self.port = self.scp.address[1]

    def instances(self) -> list[Any]:
        """The job log's instance rows, oldest first."""
        with self.log.session() as s:
            return list(s.scalars(select(db.Instance).order_by(db.Instance.id)))

    def associations(self) -> list[Any]:
        """The job log's association rows, oldest first."""
        with self.log.session() as s:
            return list(s.scalars(select(db.Association).order_by(db.Association.id)))


def rq(*contexts: tuple[int, str, tuple[str, ...]], calling: str = "SCU",
       called: str = "RTFSYN", max_pdu: int = 16382, version: int = 1,
       app: str = pdu.APPLICATION_CONTEXT) -> bytes:
    """An encoded A-ASSOCIATE-RQ (default: Verification and MR Image Storage, both Implicit
    VR Little Endian, as contexts 1 and 3)."""
    contexts = contexts or ((1, str(Verification), (str(ImplicitVRLittleEndian),)),
                            (3, str(MRImageStorage), (str(ImplicitVRLittleEndian),
                                                      str(ExplicitVRLittleEndian))))
    return pdu.encode_associate_rq(pdu.AssociateRQ(
        called, calling, tuple(pdu.ProposedContext(*c) for c in contexts),
        pdu.UserInformation(max_pdu_length=max_pdu, implementation_class_uid="1.2.3.4"),
        app, version))


def p_data(context_id: int, data: bytes, *, command: bool, last: bool = True) -> bytes:
    """One P-DATA-TF with one PDV."""
    return pdu.encode_p_data([pdu.PDV(context_id, command, last, data)])


def echo_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set."""
    return dimse.encode_command({dimse.AFFECTED_SOP_CLASS: str(Verification),
                                 dimse.COMMAND_FIELD: dimse.C_ECHO_RQ,
                                 dimse.MESSAGE_ID: message_id,
                                 dimse.DATA_SET_TYPE: dimse.NO_DATA_SET})


def store_command(sop_instance: str, sop_class: str = str(MRImageStorage),
                  message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (a data set follows)."""
    return dimse.encode_command({dimse.AFFECTED_SOP_CLASS: sop_class,
                                 dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                                 dimse.MESSAGE_ID: message_id, 0x0700: 0,
                                 dimse.DATA_SET_TYPE: 0x0000,
                                 dimse.AFFECTED_SOP_INSTANCE: sop_instance})


def data_set_bytes(path: Path) -> tuple[bytes, str, str]:
    """(the data set as encoded in the file, its SOP Instance UID, its transfer syntax)."""
    raw = path.read_bytes()
    group_length = struct.unpack_from("<I", raw, 132 + 8)[0]
    meta = dcmread(io.BytesIO(raw), stop_before_pixels=True)
    return (raw[132 + 12 + group_length:], str(meta.SOPInstanceUID),
            str(meta.file_meta.TransferSyntaxUID))


class RawPeer:
    """A TCP connection to an acceptor that sends whatever bytes a test gives it."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (never raises)."""
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *parts: bytes) -> None:
        """Send bytes; a connection the acceptor already closed is not an error here."""
        try:
            self.sock.sendall(b"".join(parts))
        except OSError:
            pass

    def drip(self, data: bytes, interval: float, until: float) -> bool:
        """Send ``data`` one byte every ``interval`` s for at most ``until`` s; False when
        the acceptor answered (e.g. A-ABORT) or closed the connection meanwhile."""
        deadline = time.monotonic() + until
        for byte in data:
            if time.monotonic() > deadline:
                return True
            try:
                self.sock.sendall(bytes([byte]))
            except OSError:
                return False
            if self.answered_within(interval):
                return False
        return True

    def answered_within(self, timeout: float) -> bool:
        """True when the acceptor sends something or closes within ``timeout`` s."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            pass
        return True

    def recv_exact(self, n: int, timeout: float = 10.0) -> bytes:
        """Exactly ``n`` bytes; raises ``ConnectionError`` if the connection ends first."""
        self.sock.settimeout(timeout)
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def recv_pdu(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """(type, body) of the next PDU."""
        kind, length = pdu.PDU_HEADER.unpack(self.recv_exact(6, timeout))
        return kind, self.recv_exact(length, timeout)

    def associate(self, request: bytes | None = None) -> tuple[int, bytes]:
        """Send an A-ASSOCIATE-RQ (default :func:`rq`); the answer PDU."""
        self.send(request or rq())
        return self.recv_pdu()

    def response(self, timeout: float = 10.0) -> dict[int, bytes]:
        """The next DIMSE response command set (one P-DATA-TF)."""
        kind, body = self.recv_pdu(timeout)
        assert kind == pdu.P_DATA_TF, f"expected a P-DATA-TF, got PDU type 0x{kind:02X}"
        return dimse.decode_command(b"".join(v.data for v in pdu.decode_p_data(body)))

    def store(self, context_id: int, data_set: bytes, sop_instance: str,
              sop_class: str = str(MRImageStorage), fragment: int = 16000) -> int:
        """Send a C-STORE (data set in fragments of ``fragment`` bytes); its status."""
        self.send(p_data(context_id, store_command(sop_instance, sop_class), command=True))
        for start in range(0, max(len(data_set), 1), fragment):
            self.send(p_data(context_id, data_set[start:start + fragment], command=False,
                             last=start + fragment >= len(data_set)))
        status = dimse.command_us(self.response(), dimse.STATUS)
        assert status is not None
        return status

    def closed_within(self, timeout: float) -> bool:
        """True when the acceptor closes the connection within ``timeout`` s (data it sends
        meanwhile is read and dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except (socket.timeout, TimeoutError):
                return False
            except OSError:
                return True


def rss_mib() -> float:
    """Resident memory of this process, MiB (Linux ``/proc``)."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def files_in(folder: Path) -> list[Path]:
    """The files directly in ``folder`` (none when it does not exist)."""
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def join_all(items: Iterable[Any]) -> None:
    """Close every :class:`RawPeer` in ``items``."""
    for item in items:
        item.close()
