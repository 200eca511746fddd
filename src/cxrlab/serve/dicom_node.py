"""The service as a DICOM node: results as DICOM objects, the listener, the outbox worker.

:class:`DicomNode` is what :mod:`cxrlab.serve.app` holds when the ``cxrlab[dicomnet]``
extra is installed. For every analysed DICOM image it builds the result objects twice
(:mod:`cxrlab.serve.dicom_results`):

- for the destinations (``--forward``, ``--forward-stow``), from the received header
  as is, so the PACS files them in the patient's study; these go only to the outbox
  (mode 0600 files) and are deleted once delivered. Their UIDs are derived from the
  source SOP Instance UID with the service's secret salt, so the same source always
  gives the same result UIDs;
- for ``GET /v1/studies/{id}/results/{sr,seg,sc}.dcm``, from the de-identified header
  (PS3.15 basic profile, :func:`cxrlab.serve.privacy.deidentify`), stored with the
  study's other artifacts; they carry no patient or study identifier.

It also runs the DIMSE listener (:class:`~cxrlab.serve.dimse.DimseListener`), whose
received instances go through the same ``process`` as an upload, and the outbox worker.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cxrlab.errors import InputError
from cxrlab.serve.dicom_results import ResultObject, build_results
from cxrlab.serve.dimse import STATUS_CANNOT_UNDERSTAND, STATUS_SUCCESS, DimseListener
from cxrlab.serve.outbox import Outbox, OutboxWorker, cstore_sender, stow_sender
from cxrlab.serve.privacy import UidHasher, deidentify
from cxrlab.serve.settings import ServeSettings

log = logging.getLogger(__name__)

# highdicom and pydicom raise these on headers they cannot build a result from.
_BUILD_ERRORS = (InputError, ValueError, TypeError, AttributeError, KeyError, IndexError)


class DicomNode:
    """Results as DICOM, the outbox and the DIMSE listener of one service.

    Args:
        settings: The service settings (listener, destinations, outbox folder, retries).
        hasher: The service's UID hasher (its salt derives the result UIDs).
    """

    def __init__(self, settings: ServeSettings, hasher: UidHasher) -> None:
        self.settings = settings
        self.hasher = hasher
        destinations = settings.destinations
        self.outbox = (Outbox(settings.outbox_dir, destinations, settings.forward_retry_initial_s,
                              settings.forward_retry_max_s) if destinations else None)
        self._worker: OutboxWorker | None = None
        self.listener: DimseListener | None = None

    # ------------------------------------------------------------------ results

    def results(self, study_id: str, header: Dataset, result: dict[str, Any], heatmap_png: bytes,
                mask_png: bytes | None) -> dict[str, bytes]:
        """Queue the results for the destinations; return the de-identified copies (name -> Part 10 bytes).

        A header the results cannot be built from is logged and gives no results (the
        study itself is still stored).
        """
        try:
            if self.outbox is not None:
                objects = build_results(header, result, heatmap_png, mask_png, self._uid_for(header))
                self.outbox.put(study_id, [_entry(obj) for obj in objects])
            clean = deidentify(copy.deepcopy(header), self.hasher)
            return {obj.name: obj.to_bytes()
                    for obj in build_results(clean, result, heatmap_png, mask_png, self._uid_for(clean))}
        except _BUILD_ERRORS as err:
            problem = err.problem if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            log.warning("study %s: no DICOM results built: %s", study_id, problem)
            return {}

    def _uid_for(self, header: Dataset) -> Callable[[str, str], str]:
        source = str(header.SOPInstanceUID)
        return lambda name, level: self.hasher.new_uid(f"cxrlab-result|{source}|{name}|{level}")

    # ------------------------------------------------------------------ lifecycle

    def start(self, process: Callable[[Path], tuple[Any, bool]], pool: Executor, spool: Path) -> None:
        """Start the outbox worker and, with ``dicom_port``, the listener; idempotent."""
        if self.outbox is not None and self._worker is None:
            senders = {"dimse": cstore_sender(self.settings.ae_title),
                       "stow": stow_sender(self.settings.forward_stow_token)}
            self._worker = OutboxWorker(self.outbox, senders).start()
        if self.settings.dicom_port is not None and self.listener is None:
            handle = _store_handler(process, pool)
            self.listener = DimseListener(self.settings.ae_title, self.settings.dicom_host, self.settings.dicom_port,
                                          handle, spool / "dimse", self.settings.allow_ae).start()

    def stop(self) -> None:
        """Stop the listener (open associations finish), then the worker; idempotent."""
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def outbox_summary(self) -> dict[str, Any]:
        """``GET /v1/outbox``."""
        if self.outbox is None:
            return {"destinations": [], "pending": 0, "failed": 0, "items": []}
        return self.outbox.summary()


def _entry(obj: ResultObject) -> tuple[str, str, str, bytes]:
    return obj.name, obj.sop_class_uid, obj.sop_instance_uid, obj.to_bytes()


def _store_handler(process: Callable[[Path], tuple[Any, bool]], pool: Executor) -> Callable[[Path], int]:
    """``handle(path) -> C-STORE status``: analyse and store in the inference pool, like an upload."""

    def handle(path: Path) -> int:
        try:
            record, repeat = pool.submit(process, path).result()
        except InputError as err:
            log.warning("DICOM listener: received instance not analysed: %s", err.problem)
            return STATUS_CANNOT_UNDERSTAND
        log.info("DICOM listener: instance %s study %s", "repeats" if repeat else "stored as", record.id)
        return STATUS_SUCCESS

    return handle


__all__ = ["DicomNode"]
