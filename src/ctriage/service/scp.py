"""The DICOM listener: a pynetdicom Storage SCP for CT images, with Verification (C-ECHO).

Access control by default: only the peers of ``allowed_peers`` (AE title and host) may associate, nobody but
this machine when it is empty; only our own AE title may be called; only CT image storage is accepted; new
associations are refused while the data disk has less than ``min_free_disk_mb`` free. Every association (and
every refusal) is a line in the audit trail. With a certificate configured the listener speaks TLS only (see
``ctriage.service.tls``).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import threading
from dataclasses import dataclass

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from ctriage.service import audit, tls
from ctriage.service.config import ServiceConfig
from ctriage.service.store import StudyStore

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
CT_STORAGE = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, LOCAL_LIMIT_EXCEEDED = 0x03, 0x02


def handle_store(event: evt.Event, store: StudyStore, source: str = "push") -> int:
    """C-STORE handler: write the instance to disk and record it, then acknowledge; failures are not acked."""
    try:
        dataset = event.dataset
        data = event.encoded_dataset(include_meta=True)
    except Exception:  # a dataset pynetdicom cannot decode
        log.exception("cannot decode instance from %s", event.assoc.requestor.ae_title)
        return STATUS_CANNOT_UNDERSTAND
    try:
        store.add_instance(data, dataset, event.assoc.requestor.ae_title, source)
    except ValueError as exc:
        log.warning("rejected instance from %s: %s", event.assoc.requestor.ae_title, exc)
        return STATUS_CANNOT_UNDERSTAND
    except OSError:
        log.exception("cannot write instance")
        return STATUS_OUT_OF_RESOURCES
    return STATUS_SUCCESS


@dataclass(frozen=True)
class Peer:
    """One entry of ``allowed_peers``: an AE title and the addresses it may call from."""

    ae_title: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entry: str) -> Peer:
        """``AE@host``: host is an IP address, a network (``10.1.2.0/24``) or a name (resolved now)."""
        ae_title, _, host = entry.partition("@")
        if not ae_title or not host:
            raise ValueError(f"allowed_peers: {entry!r}: expected AE_TITLE@host")
        try:
            networks = (ipaddress.ip_network(host, strict=False),)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None)
            except OSError as exc:
                raise ValueError(f"allowed_peers: {entry!r}: cannot resolve {host!r} ({exc})") from exc
            networks = tuple({ipaddress.ip_network(info[4][0]) for info in infos})
        return cls(ae_title.strip(), networks)

    def admits(self, ae_title: str, address: str) -> bool:
        """Whether a calling AE title from an IP address is this peer."""
        return ae_title.strip() == self.ae_title and _in(address, self.networks)


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class Listener:
    """Event handlers of the listener: access control on association requests, storage, audit lines."""

    def __init__(self, config: ServiceConfig, store: StudyStore) -> None:
        self.config = config
        self.store = store
        self.peers = tuple(Peer.parse(entry) for entry in config.allowed_peers)
        self._stored: dict[int, int] = {}  # id(accepted association) -> instances stored on it
        self._lock = threading.Lock()

    def refusal(self, ae_title: str, address: str) -> str:
        """Why an association request is refused ("" when it is accepted)."""
        if self.peers:
            if not any(peer.admits(ae_title, address) for peer in self.peers):
                return f"{ae_title}@{address} is not in allowed_peers"
        elif not _in(address, LOOPBACK):
            return f"{ae_title}@{address}: allowed_peers is empty, so only this machine may connect"
        free_mb = shutil.disk_usage(self.config.data_dir).free / 2**20
        if free_mb < self.config.min_free_disk_mb:
            return f"only {free_mb:.0f} MB free on the data disk (min_free_disk_mb = {self.config.min_free_disk_mb})"
        return ""

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: refuse peers that are not allowed, and everyone while the disk is nearly full."""
        assoc: Association = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = assoc.requestor.address
        reason = self.refusal(ae_title, address)
        if not reason:
            return
        log.warning("association refused: %s", reason)
        audit.record(self.store.sessions, "dicom-refused", user=ae_title, host=address, detail=reason)
        if reason.startswith("only"):
            assoc.acse.send_reject(REJECT_TRANSIENT, SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
        else:
            assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNISED)
        assoc.is_rejected = True  # as pynetdicom's own refusals: no negotiation follows, the rejection is sent
        assoc.kill()

    def on_accepted(self, event: evt.Event) -> None:
        """EVT_ACCEPTED: start counting the association's instances."""
        with self._lock:
            self._stored[id(event.assoc)] = 0

    def on_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: store the instance (``handle_store``) and count it for the association's audit line."""
        status = handle_store(event, self.store)
        if status == STATUS_SUCCESS:
            with self._lock:
                self._stored[id(event.assoc)] = self._stored.get(id(event.assoc), 0) + 1
        return status

    def on_ended(self, event: evt.Event) -> None:
        """EVT_RELEASED / EVT_ABORTED: one audit line per accepted association, with the instances stored."""
        assoc: Association = event.assoc
        with self._lock:
            stored = self._stored.pop(id(assoc), None)
        if stored is None:  # refused, or already recorded
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        audit.record(
            self.store.sessions,
            "dicom-association",
            user=str(assoc.requestor.ae_title).strip(),
            host=assoc.requestor.address,
            detail=f"{stored} instances stored, {how}{', TLS' if self.config.tls else ''}",
        )


def make_ae(config: ServiceConfig) -> AE:
    """An AE with ctriage's AE title accepting CT image storage (any transfer syntax) and C-ECHO, only when called
    by its own AE title."""
    ae = AE(ae_title=config.ae_title)
    for sop_class in CT_STORAGE:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    return ae


def start_listener(config: ServiceConfig, store: StudyStore) -> ThreadedAssociationServer:
    """Start the Storage SCP on ``dicom_host:dicom_port`` in background threads, TLS only when a certificate is
    configured; stop with ``.shutdown()``."""
    listener = Listener(config, store)
    handlers = [
        (evt.EVT_REQUESTED, listener.on_requested),
        (evt.EVT_ACCEPTED, listener.on_accepted),
        (evt.EVT_C_STORE, listener.on_store),
        (evt.EVT_RELEASED, listener.on_ended),
        (evt.EVT_ABORTED, listener.on_ended),
    ]
    server = make_ae(config).start_server(
        (config.dicom_host, config.dicom_port),
        block=False,
        evt_handlers=handlers,
        ssl_context=tls.listener_context(config),
    )
    log.info(
        "DICOM listener %s on %s:%d%s",
        config.ae_title, config.dicom_host, config.dicom_port, " (TLS only)" if config.tls else "",
    )
    return server
