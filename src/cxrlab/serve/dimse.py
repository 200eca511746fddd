"""The DIMSE listener: a C-ECHO / C-STORE SCP (pynetdicom) beside the HTTP API.

:class:`DimseListener` accepts associations called to its AE title, from the calling AE
titles it allows (any, when none is listed), and negotiates only what cxrlab reads:
the storage SOP classes a chest radiograph arrives in (CR, DX for presentation and for
processing, secondary capture) and Verification, each with the transfer syntaxes an
installed pydicom pixel decoder handles (:func:`decodable_transfer_syntaxes`). A context
with anything else is refused in negotiation (result "transfer syntax not supported" or
"abstract syntax not supported"), so no instance arrives that cannot be decoded.

Each received instance is written, as received (Part 10 with the association's file
meta), to a private spool file and handed to ``handle(path)``, which analyses and stores
it like an upload and returns the C-STORE status.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         HTJ2KLossless, HTJ2KLosslessRPCL, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, RLELossless)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage, Verification)
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

IMAGE_STORAGE_CLASSES: tuple[UID, ...] = (
    UID(ComputedRadiographyImageStorage), UID(DigitalXRayImageStorageForPresentation),
    UID(DigitalXRayImageStorageForProcessing), UID(SecondaryCaptureImageStorage))
"""The storage SOP classes the listener accepts (what a chest radiograph arrives in)."""

_CANDIDATE_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, RLELossless)

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700

Handler = Callable[[Path], int]


def decodable_transfer_syntaxes() -> list[UID]:
    """The transfer syntaxes whose pixel data an installed pydicom decoder reads."""
    out = []
    for syntax in _CANDIDATE_SYNTAXES:
        try:
            if get_decoder(syntax).is_available:
                out.append(syntax)
        except NotImplementedError:
            continue
    return out


class DimseListener:
    """A Storage and Verification SCP on ``host:port``.

    Args:
        ae_title: This node's AE title; associations called to another title are rejected.
        host: Address to listen on.
        port: Port (0: any free port, see :attr:`port` after :meth:`start`).
        handle: ``handle(spooled_path) -> C-STORE status`` for each received instance,
            called in the association's thread; the spool file is removed afterwards.
        spool: Folder for the received files (private to the service).
        allowed_calling_aes: Calling AE titles accepted; empty accepts any.
        max_associations: Concurrent associations.
    """

    def __init__(self, ae_title: str, host: str, port: int, handle: Handler, spool: str | Path,
                 allowed_calling_aes: Sequence[str] = (), max_associations: int = 16) -> None:
        self.ae_title = ae_title
        self.host = host
        self.requested_port = port
        self.handle = handle
        self.spool = Path(spool)
        self.allowed = tuple(allowed_calling_aes)
        self.syntaxes = decodable_transfer_syntaxes()
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        if self.allowed:
            self.ae.require_calling_aet = list(self.allowed)
        self.ae.maximum_associations = max_associations
        for sop_class in IMAGE_STORAGE_CLASSES:
            self.ae.add_supported_context(sop_class, self.syntaxes)
        self.ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the one the system chose for 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    def start(self) -> DimseListener:
        """Listen (in pynetdicom's server thread); idempotent."""
        if self._server is None:
            pynetdicom_log = logging.getLogger("pynetdicom")
            if pynetdicom_log.level == logging.NOTSET:
                # its DEBUG output dumps the received datasets' headers (patient data)
                pynetdicom_log.setLevel(logging.INFO)
            self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._server = self.ae.start_server(
                (self.host, self.requested_port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
            log.info("DICOM listener %s on %s:%d (allowed calling AEs: %s; %d transfer syntaxes)", self.ae_title,
                     self.host, self.port, ", ".join(self.allowed) or "any", len(self.syntaxes))
        return self

    def stop(self) -> None:
        """Stop listening and wait for the open associations; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def _on_store(self, event: evt.Event) -> int:
        fd, name = tempfile.mkstemp(prefix="dimse-", suffix=".dcm", dir=self.spool)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(event.encoded_dataset(include_meta=True))
            return self.handle(path)
        except OSError as err:
            log.error("DICOM listener: cannot spool a received instance: %s", err)
            return STATUS_OUT_OF_RESOURCES
        finally:
            path.unlink(missing_ok=True)


__all__ = ["DimseListener", "IMAGE_STORAGE_CLASSES", "STATUS_CANNOT_UNDERSTAND", "STATUS_OUT_OF_RESOURCES",
           "STATUS_SUCCESS", "decodable_transfer_syntaxes"]
