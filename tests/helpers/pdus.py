"""Raw PDUs read off a socket, for tests that talk to the node below the DICOM toolkits."""
from __future__ import annotations

import socket

from dicom_node.net.pdu import PDU_HEADER

__all__ = ["recv_exact", "read_pdu"]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``; ``ConnectionError`` when the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One whole PDU from ``sock``: its type and body."""
    kind, length = PDU_HEADER.unpack(recv_exact(sock, PDU_HEADER.size))
    return kind, recv_exact(sock, length)
