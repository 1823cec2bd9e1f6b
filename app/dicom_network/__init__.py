"""DICOM networking of the service: a C-STORE listener that spools received series to disk, analysis of stable
series through the same path as the REST API, and an on-disk outbox that sends SEG, SR and summary to C-STORE
and STOW-RS destinations (:mod:`~app.dicom_network.gateway`)."""

from __future__ import annotations

import asyncio
from typing import Any


def start_gateway(service: Any, settings: Any) -> Any:
    """Start the DICOM gateway on the running event loop when ``settings.dicom_port`` is set; else None."""
    if settings.dicom_port is None:
        return None
    from app.dicom_network.gateway import DicomGateway

    gateway = DicomGateway(service, settings, asyncio.get_running_loop())
    gateway.start()
    return gateway
