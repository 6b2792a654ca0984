"""TLS for DICOM associations (server side and, for destinations with ``tls = true``,
client side), from the ``[node.tls]`` section.

* Server: the node presents ``certificate``/``private_key``; with
  ``ca_certificates`` it verifies client certificates that are offered, and
  with ``require_client_certificate = true`` it refuses clients without one.
* Client: the node verifies the destination's certificate against
  ``ca_certificates`` (and its host name or IP address) and presents its own
  certificate, so a destination may require client certificates too.

TLS 1.2 is the minimum version.
"""
from __future__ import annotations

import logging
import ssl
from typing import Any

from dicom_node.config import TLSConfig

__all__ = ["server_context", "client_context", "TLSConfigError", "DeferredHandshakeContext"]

logger = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """The TLS files could not be loaded (the message names the file)."""


class DeferredHandshakeContext(ssl.SSLContext):
    """A server context whose sockets do their TLS handshake on first use.

    pynetdicom wraps each accepted connection in the thread that accepts every
    connection; with the default ``do_handshake_on_connect=True`` a peer that
    connects and never sends its ClientHello would block that thread, and so
    every other peer, for ever. Deferred, the handshake runs in the connection's
    own thread on its first read, bounded by the network timeout.
    """

    def wrap_socket(self, sock: Any, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | None = None, session: Any = None) -> ssl.SSLSocket:
        """Wrap ``sock``; the handshake is left to the first read or write."""
        return super().wrap_socket(sock, server_side=server_side,
                                   do_handshake_on_connect=False,
                                   suppress_ragged_eofs=suppress_ragged_eofs,
                                   server_hostname=server_hostname, session=session)


def _load_chain(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    try:
        ctx.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load node.tls.certificate {str(tls.certificate)!r} with "
                             f"node.tls.private_key {str(tls.private_key)!r}: {exc}") from exc


def _load_ca(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    try:
        ctx.load_verify_locations(cafile=str(tls.ca_certificates))
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load node.tls.ca_certificates "
                             f"{str(tls.ca_certificates)!r}: {exc}") from exc


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The SSL context the storage SCP listens with."""
    ctx = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, tls)
    if tls.ca_certificates is not None:
        _load_ca(ctx, tls)
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.require_client_certificate
                           else ssl.CERT_OPTIONAL)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    logger.info("TLS enabled; client certificates %s",
                "required" if tls.require_client_certificate else
                ("verified when offered" if tls.ca_certificates else "not verified"))
    return ctx


def client_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """The SSL context used to send to a destination with ``tls = true``."""
    if tls is None or tls.ca_certificates is None:
        raise TLSConfigError("a destination with tls = true needs [node.tls] with "
                             "ca_certificates to verify it. Found none.")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(ctx, tls)
    _load_chain(ctx, tls)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
