"""The persistent outbox: result objects stored before they are sent, retried until delivered.

Layout of the outbox folder (mode 0700, every file 0600: the objects carry the source's
patient and study identifiers so the destination can file them, and nothing else of
the service does):

- ``pending/<id>.dcm``: the DICOM object to send; ``pending/<id>.json``: its state
  (destination, attempts, next attempt, last error). The ``.dcm`` is written and
  fsynced first, then the ``.json``; an item exists once its ``.json`` does (a ``.dcm``
  without one is what a crash left mid-write, removed at start).
- ``failed/<id>.dcm`` / ``.json``: items the destination refused for good (a C-STORE
  failure status, an HTTP 4xx), kept for an operator, listed by ``GET /v1/outbox``.

An item's id is a hash of the object's SOP Instance UID and the destination, so putting
the same result twice (a source pushed again after a crash) replaces the item instead of
adding one, and the destination, keyed by SOP Instance UID, stores it once. A delivered
item's files are deleted. One :class:`OutboxWorker` thread sends due items, one at a
time, and backs off exponentially per item while a destination is down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from cxrlab.serve.destinations import Destination

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = range(0xA700, 0xA800)                       # Refused: out of resources


@dataclass(frozen=True)
class OutboxItem:
    """The state of one object for one destination (the ``.json`` beside the ``.dcm``)."""

    id: str
    name: str
    study_id: str
    destination: str
    sop_class_uid: str
    created_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    state: Literal["pending", "failed"] = "pending"

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/outbox`` shows (no patient or study identifier, no source UID)."""
        out = asdict(self)
        out["created_at"] = _iso(self.created_at)
        out["next_attempt_at"] = _iso(self.next_attempt_at) if self.state == "pending" else None
        return out


class DeliveryError(Exception):
    """A send failed; ``retry`` says whether trying again later may succeed."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


Sender = Callable[[Destination, Dataset], None]


class Outbox:
    """The outbox folder: put, list, and the state changes of the worker.

    Args:
        folder: The outbox folder (created 0700).
        destinations: Where every put object goes.
        retry_initial_s: Wait before the second attempt; doubled after each failure ...
        retry_max_s: ... up to this.
    """

    def __init__(self, folder: str | Path, destinations: Sequence[Destination], retry_initial_s: float = 1.0,
                 retry_max_s: float = 60.0) -> None:
        self.folder = Path(folder)
        self.destinations = {d.name: d for d in destinations}
        self.retry_initial_s = float(retry_initial_s)
        self.retry_max_s = float(retry_max_s)
        self._lock = threading.Lock()
        self.wakeup = threading.Event()
        for sub in ("pending", "failed"):
            (self.folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self._sweep()

    @property
    def pending_dir(self) -> Path:
        return self.folder / "pending"

    @property
    def failed_dir(self) -> Path:
        return self.folder / "failed"

    def _sweep(self) -> None:
        """Remove what a crash left mid-write: temporary files and objects without a state file."""
        for sub in (self.pending_dir, self.failed_dir):
            for path in sub.iterdir():
                if path.name.startswith(".") or (path.suffix == ".dcm" and not path.with_suffix(".json").exists()):
                    path.unlink(missing_ok=True)

    def put(self, study_id: str, objects: Iterable[tuple[str, str, str, bytes]]) -> list[OutboxItem]:
        """Store ``(name, sop_class_uid, sop_instance_uid, part10_bytes)`` objects for every destination.

        Returns:
            The new items (an item already pending for the same object and destination is
            replaced, its attempts reset).
        """
        items = []
        now = time.time()
        for name, sop_class_uid, sop_instance_uid, data in objects:
            for destination in self.destinations:
                item_id = hashlib.sha256(f"{sop_instance_uid}|{destination}".encode()).hexdigest()[:32]
                item = OutboxItem(id=item_id, name=name, study_id=study_id, destination=destination,
                                  sop_class_uid=sop_class_uid, created_at=now, next_attempt_at=now)
                with self._lock:
                    _write_private(self.pending_dir / f"{item_id}.dcm", data)
                    _write_private(self.pending_dir / f"{item_id}.json", _state_bytes(item))
                items.append(item)
        if items:
            self.wakeup.set()
        return items

    def items(self, state: Literal["pending", "failed"] = "pending") -> list[OutboxItem]:
        """The items in one state, oldest first (unreadable state files are skipped and logged)."""
        folder = self.pending_dir if state == "pending" else self.failed_dir
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                out.append(OutboxItem(**json.loads(path.read_text())))
            except FileNotFoundError:
                continue                                   # delivered meanwhile
            except (ValueError, TypeError) as err:
                log.error("outbox: unreadable state file %s: %s", path.name, err)
        return sorted(out, key=lambda item: (item.created_at, item.id))

    def due(self, now: float | None = None) -> list[OutboxItem]:
        now = time.time() if now is None else now
        return [item for item in self.items() if item.next_attempt_at <= now]

    def next_due_in(self, now: float | None = None) -> float | None:
        """Seconds until the next pending item is due (0 when one is), None when none is pending."""
        now = time.time() if now is None else now
        times = [item.next_attempt_at for item in self.items()]
        return None if not times else max(0.0, min(times) - now)

    def object_path(self, item: OutboxItem) -> Path:
        return (self.pending_dir if item.state == "pending" else self.failed_dir) / f"{item.id}.dcm"

    def delivered(self, item: OutboxItem) -> None:
        """Delete a delivered item (state file first: without it the object is an orphan)."""
        with self._lock:
            (self.pending_dir / f"{item.id}.json").unlink(missing_ok=True)
            (self.pending_dir / f"{item.id}.dcm").unlink(missing_ok=True)
            _fsync_dir(self.pending_dir)

    def retry_later(self, item: OutboxItem, error: str) -> OutboxItem:
        """Count a failed attempt and schedule the next one (exponential backoff)."""
        attempts = item.attempts + 1
        wait = min(self.retry_max_s, self.retry_initial_s * 2 ** (attempts - 1))
        updated = replace(item, attempts=attempts, next_attempt_at=time.time() + wait, last_error=error[:500])
        with self._lock:
            if (self.pending_dir / f"{item.id}.dcm").exists():
                _write_private(self.pending_dir / f"{item.id}.json", _state_bytes(updated))
        return updated

    def fail(self, item: OutboxItem, error: str) -> OutboxItem:
        """Move an item the destination refused for good to ``failed/``."""
        updated = replace(item, attempts=item.attempts + 1, last_error=error[:500], state="failed")
        with self._lock:
            source = self.pending_dir / f"{item.id}.dcm"
            if source.exists():
                os.replace(source, self.failed_dir / f"{item.id}.dcm")
                _write_private(self.failed_dir / f"{item.id}.json", _state_bytes(updated))
                (self.pending_dir / f"{item.id}.json").unlink(missing_ok=True)
        return updated

    def summary(self) -> dict[str, Any]:
        """``GET /v1/outbox``: destinations, pending and failed items."""
        pending, failed = self.items("pending"), self.items("failed")
        return {"destinations": sorted(self.destinations), "pending": len(pending), "failed": len(failed),
                "items": [item.public() for item in pending + failed]}


class OutboxWorker:
    """One thread that sends due items, one at a time, until :meth:`stop`.

    Args:
        outbox: The outbox.
        senders: Destination kind (``dimse``, ``stow``) -> ``send(destination, dataset)``,
            which raises :class:`DeliveryError` when the object was not stored.
        idle_s: Longest sleep between looks at the folder.
    """

    def __init__(self, outbox: Outbox, senders: Mapping[str, Sender], idle_s: float = 1.0) -> None:
        self.outbox = outbox
        self.senders = dict(senders)
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> OutboxWorker:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cxrlab-outbox", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self.outbox.wakeup.set()
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.outbox.wakeup.clear()
            for item in self.outbox.due():
                if self._stop.is_set():
                    return
                self.send(item)
            wait = self.outbox.next_due_in()
            self.outbox.wakeup.wait(self.idle_s if wait is None else min(self.idle_s, wait))

    def send(self, item: OutboxItem) -> bool:
        """Try one item now; True when delivered."""
        destination = self.outbox.destinations.get(item.destination)
        if destination is None:
            self.outbox.fail(item, f"destination {item.destination} is no longer configured")
            log.warning("outbox: %s %s kept in failed/: its destination is no longer configured", item.name, item.id)
            return False
        try:
            dataset = pydicom.dcmread(self.outbox.object_path(item))
        except FileNotFoundError:
            return False
        except (pydicom.errors.InvalidDicomError, OSError, ValueError) as err:
            self.outbox.fail(item, f"unreadable outbox object: {err}")
            return False
        try:
            self.senders[destination.kind](destination, dataset)
        except DeliveryError as err:
            if err.retry:
                updated = self.outbox.retry_later(item, str(err))
                log.warning("outbox: %s of study %s to %s not delivered (attempt %d, next in %.1f s): %s",
                            item.name, item.study_id, item.destination, updated.attempts,
                            max(0.0, updated.next_attempt_at - time.time()), err)
            else:
                self.outbox.fail(item, str(err))
                log.error("outbox: %s of study %s refused by %s, kept in failed/: %s", item.name, item.study_id,
                          item.destination, err)
            return False
        self.outbox.delivered(item)
        log.info("outbox: %s of study %s delivered to %s", item.name, item.study_id, item.destination)
        return True


# --------------------------------------------------------------------------- senders


def cstore_sender(calling_ae: str, timeout_s: float = 30.0) -> Sender:
    """A C-STORE SCU (pynetdicom): one association per object, proposing the object's SOP
    class with Explicit and Implicit VR Little Endian."""

    def send(destination: Destination, dataset: Dataset) -> None:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.add_requested_context(dataset.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise DeliveryError(f"association with {destination.name} {reason}", retry=True)
        try:
            if not assoc.accepted_contexts:
                raise DeliveryError(f"{destination.name} accepts no context for SOP class {dataset.SOPClassUID}",
                                    retry=False)
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        code = int(status.get("Status", -1)) if status else -1
        if code == -1:
            raise DeliveryError(f"no C-STORE response from {destination.name} (connection lost or timed out)",
                                retry=True)
        if code == 0x0000 or code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
            return                                           # success, or success with a warning
        raise DeliveryError(f"C-STORE status 0x{code:04X} from {destination.name}", retry=code in _RETRYABLE_STATUS)

    return send


def stow_sender(token: str | None = None, timeout_s: float = 30.0) -> Sender:
    """A STOW-RS client (dicomweb-client), with ``Authorization: Bearer token`` when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else None

    def send(destination: Destination, dataset: Dataset) -> None:
        client = DICOMwebClient(url=destination.url, headers=headers, timeout=timeout_s)
        try:
            response = client.store_instances([dataset])
        except requests.HTTPError as err:
            code = err.response.status_code if err.response is not None else 0
            raise DeliveryError(f"STOW-RS to {destination.name}: HTTP {code}",
                                retry=code >= 500 or code in (0, 408, 429)) from err
        except (requests.ConnectionError, requests.Timeout) as err:
            raise DeliveryError(f"STOW-RS to {destination.name}: {type(err).__name__}", retry=True) from err
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason")
            raise DeliveryError(f"STOW-RS to {destination.name} failed the instance (reason {reason})", retry=False)

    return send


# --------------------------------------------------------------------------- files


def _state_bytes(item: OutboxItem) -> bytes:
    return (json.dumps(asdict(item), indent=1) + "\n").encode()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a fsynced temporary file and rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


__all__ = ["DeliveryError", "Outbox", "OutboxItem", "OutboxWorker", "cstore_sender", "stow_sender"]
