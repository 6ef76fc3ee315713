"""DICOM over TLS (the DICOM Secure Transport Connection Profile): TLS 1.2 or later, the listener presenting
``tls_certificate``, peers presenting a certificate signed by ``tls_ca_certificates`` when that is set (mutual
TLS); outgoing associations (queries, retrieves, sends) verify the peer's certificate and host name.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from ctriage.service.config import DicomNode, ServiceConfig

HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and says nothing is dropped after this long


class ListenerContext(ssl.SSLContext):
    """A server-side context whose handshakes time out.

    pynetdicom does the TLS handshake in its accept loop, so without a timeout a client that opens a connection
    and sends nothing would stop the listener from accepting anybody else.
    """

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        """Wrap and handshake within ``HANDSHAKE_TIMEOUT_S``, then hand back a blocking socket as pynetdicom expects."""
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        wrapped.settimeout(None)
        return wrapped


def listener_context(config: ServiceConfig) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when it speaks plain DICOM (no certificate configured)."""
    if not config.tls:
        return None
    context = ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_certificate), str(config.tls_private_key))
    if config.tls_ca_certificates is not None:
        context.load_verify_locations(cafile=str(config.tls_ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_args(config: ServiceConfig, node: DicomNode) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association with ``node``: None unless ``tls_outgoing``; our certificate
    is presented when one is configured."""
    if not config.tls_outgoing:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.tls_ca_certificates))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls:
        context.load_cert_chain(str(config.tls_certificate), str(config.tls_private_key))
    return context, node.host
