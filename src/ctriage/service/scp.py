"""The DICOM listener: a pynetdicom Storage SCP with Verification (C-ECHO)."""

from __future__ import annotations

import logging

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from ctriage.service.config import ServiceConfig
from ctriage.service.store import StudyStore

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700


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


def make_ae(config: ServiceConfig) -> AE:
    """An AE with ctriage's AE title accepting every storage SOP class (any transfer syntax) and C-ECHO."""
    ae = AE(ae_title=config.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    if config.allowed_calling_aets:
        ae.require_calling_aet = list(config.allowed_calling_aets)
    return ae


def start_listener(config: ServiceConfig, store: StudyStore) -> ThreadedAssociationServer:
    """Start the Storage SCP on ``dicom_host:dicom_port`` in background threads; stop with ``.shutdown()``."""
    ae = make_ae(config)
    handlers = [(evt.EVT_C_STORE, handle_store, [store])]
    server = ae.start_server((config.dicom_host, config.dicom_port), block=False, evt_handlers=handlers)
    log.info("DICOM listener %s on %s:%d", config.ae_title, config.dicom_host, config.dicom_port)
    return server
