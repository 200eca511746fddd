"""The worklist and results of the inference service, in SQLite, plus their PNG artifacts.

One table, ``studies``, holds a row per answered upload: the result JSON, the
de-identified header, the priority used to order the worklist, the read status and the
salted hashes of the SOP/Study Instance UIDs. The database runs in WAL mode with
``synchronous=FULL`` and every change is one transaction, so a study answered with 200
survives a killed process (and a power cut).

Artifacts (heatmap and mask PNGs) live in ``ARTIFACTS/<study id>/<name>``. They are
written atomically (temporary file, fsync, rename) *before* the row that references them
commits, and they are served only through a committed row: a crash in between leaves
an unreferenced folder, which the next :class:`Store` removes when it opens. A failed
insert removes its folder at once. Nothing is ever half-stored.

One :class:`Store` (one process) owns a database at a time; its methods are thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxrlab.errors import InputError
from cxrlab.io import write_bytes_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("new", "read")
RESULT_ARTIFACTS = ("sr.dcm", "seg.dcm", "sc.dcm")
"""The de-identified DICOM results (cxrlab.serve.dicom_results) kept with a study."""
ARTIFACT_NAMES = ("heatmap.png", "mask.png", *RESULT_ARTIFACTS)
_ID_RE = re.compile(r"^[0-9a-f]{32}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('new', 'read')),
    read_at TEXT,
    priority_rank INTEGER NOT NULL,
    priority_group TEXT NOT NULL,
    priority_score REAL NOT NULL,
    sop_hash TEXT UNIQUE,
    study_hash TEXT,
    result TEXT NOT NULL,
    header TEXT,
    artifacts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_priority ON studies (priority_rank, priority_score DESC, seq);
CREATE INDEX IF NOT EXISTS studies_status ON studies (status, priority_rank, priority_score DESC, seq);
"""


class StoreError(InputError):
    """The database file cannot be opened or is not a cxrlab worklist."""


@dataclass(frozen=True)
class StudyRecord:
    """One stored study.

    Attributes:
        id: 32 hex characters, random.
        created_at: ISO 8601 UTC time the result was stored.
        status: ``"new"`` or ``"read"``.
        read_at: When it was marked read.
        priority_rank: 0 critical, 1 abnormal, 2 no finding, 3 definitely normal.
        priority_group: The rank's name.
        priority_score: Orders studies within a rank (higher first).
        sop_hash: Salted hash of the SOP Instance UID (None for PNG/JPEG).
        study_hash: Salted hash of the Study Instance UID.
        result: The analysis (findings, screening, mask, heatmap, models, ...).
        header: The de-identified DICOM header, or None.
        artifacts: Names of the stored PNGs (``heatmap.png``, ``mask.png``).
    """

    id: str
    created_at: str
    status: str
    priority_rank: int
    priority_group: str
    priority_score: float
    result: dict[str, Any]
    read_at: str | None = None
    sop_hash: str | None = None
    study_hash: str | None = None
    header: dict[str, Any] | None = None
    artifacts: tuple[str, ...] = field(default_factory=tuple)


class DuplicateStudyError(Exception):
    """An upload repeats a stored SOP instance; ``existing`` is the stored study."""

    def __init__(self, existing: StudyRecord) -> None:
        super().__init__(f"study {existing.id} already holds this SOP instance")
        self.existing = existing


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def valid_id(study_id: str) -> bool:
    """Whether ``study_id`` has the form of a study id (32 lowercase hex characters)."""
    return bool(_ID_RE.match(study_id))


class Store:
    """SQLite worklist plus artifact folder.

    Args:
        db: The database file (created with its folder when missing).
        artifact_dir: Folder of the PNG artifacts (created when missing).

    Raises:
        StoreError: The file is not a SQLite database or holds another schema.
    """

    def __init__(self, db: str | Path, artifact_dir: str | Path) -> None:
        self.db = Path(db)
        self.artifact_dir = Path(artifact_dir)
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._conn.execute(statement)
                row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    self._conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                                       (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(self.db, f"worklist schema version {row[0]}; this cxrlab reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as err:
            raise StoreError(self.db, f"cannot open the worklist database: {err}") from err
        self._sweep_orphans()

    # ------------------------------------------------------------------ plumbing

    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self) -> sqlite3.Connection:
                store._conn.execute("BEGIN IMMEDIATE")
                return store._conn

            def __exit__(self, kind, value, tb) -> bool:
                if kind is None:
                    store._conn.execute("COMMIT")
                else:
                    store._conn.execute("ROLLBACK")
                return False

        return _Tx()

    def _sweep_orphans(self) -> None:
        """Remove study folders no committed row references (a crash before commit) and
        temporary files; anything else in the folder is left alone."""
        with self._lock:
            known = {row[0] for row in self._conn.execute("SELECT id FROM studies")}
        removed = 0
        for entry in self.artifact_dir.iterdir():
            if entry.is_dir() and valid_id(entry.name) and entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
            elif entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
        if removed:
            log.warning("removed %d unreferenced artifact folder(s) left by an interrupted upload", removed)

    def close(self) -> None:
        """Close the database (a WAL checkpoint folds the log into the main file)."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                pass
            self._conn.close()

    # ------------------------------------------------------------------ writes

    def add(self, record: StudyRecord, files: Mapping[str, bytes] | None = None) -> StudyRecord:
        """Store ``record`` and its artifact files; all or nothing.

        Args:
            record: The study (its ``artifacts`` field is set from ``files``).
            files: Artifact name (one of :data:`ARTIFACT_NAMES`) -> PNG bytes.

        Returns:
            The stored record.

        Raises:
            DuplicateStudyError: A study with the same ``sop_hash`` is stored already
                (nothing of this one is kept).
        """
        files = dict(files or {})
        unknown = sorted(set(files) - set(ARTIFACT_NAMES))
        if unknown or not valid_id(record.id):
            raise ValueError(f"bad study id {record.id!r} or artifact names {unknown}")
        record = replace(record, artifacts=tuple(sorted(files)))
        folder = self.artifact_dir / record.id
        try:
            for name, data in files.items():
                write_bytes_atomic(folder / name, data, private=True)
            if files:
                _fsync_dir(folder)
                _fsync_dir(self.artifact_dir)
            with self._lock, self._transaction() as conn:
                conn.execute(
                    "INSERT INTO studies (id, created_at, status, read_at, priority_rank, priority_group, "
                    "priority_score, sop_hash, study_hash, result, header, artifacts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.created_at, record.status, record.read_at, record.priority_rank,
                     record.priority_group, float(record.priority_score), record.sop_hash, record.study_hash,
                     json.dumps(record.result), None if record.header is None else json.dumps(record.header),
                     json.dumps(list(record.artifacts))))
        except sqlite3.IntegrityError as err:
            shutil.rmtree(folder, ignore_errors=True)
            existing = self.find_sop(record.sop_hash) if record.sop_hash else None
            if existing is not None:
                raise DuplicateStudyError(existing) from err
            raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return record

    def mark_read(self, study_id: str) -> StudyRecord | None:
        """Set a study's status to ``read`` (kept read); None when there is no such study."""
        with self._lock, self._transaction() as conn:
            conn.execute("UPDATE studies SET status = 'read', read_at = ? WHERE id = ? AND status = 'new'",
                         (utc_now(), study_id))
        return self.get(study_id)

    # ------------------------------------------------------------------ reads

    def get(self, study_id: str) -> StudyRecord | None:
        """The study, or None."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM studies WHERE id = ?", (study_id,)).fetchone()
        return None if row is None else _record(row)

    def find_sop(self, sop_hash: str | None) -> StudyRecord | None:
        """The study stored for this SOP instance hash, or None."""
        if not sop_hash:
            return None
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM studies WHERE sop_hash = ?", (sop_hash,)).fetchone()
        return None if row is None else _record(row)

    def artifact(self, study_id: str, name: str) -> Path | None:
        """Path of a committed study's artifact, or None (no study, no such artifact)."""
        record = self.get(study_id)
        if record is None or name not in record.artifacts:
            return None
        path = self.artifact_dir / record.id / name
        return path if path.is_file() else None

    def worklist(self, status: str | None = None, limit: int = 100, offset: int = 0
                 ) -> tuple[list[StudyRecord], int]:
        """Studies by priority: rank, then score (high first), then arrival.

        Args:
            status: Only ``"new"`` or ``"read"`` studies; None for all.
            limit: Page size.
            offset: Studies skipped.

        Returns:
            ``(page, total)``: the page and the number of studies matching ``status``.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM studies {where}", params).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM studies {where} "
                "ORDER BY priority_rank ASC, priority_score DESC, seq ASC LIMIT ? OFFSET ?",
                [*params, int(limit), int(offset)]).fetchall()
        return [_record(row) for row in rows], int(total)

    def count(self) -> int:
        """Number of stored studies."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0])


_COLUMNS = ("id, created_at, status, read_at, priority_rank, priority_group, priority_score, sop_hash, "
            "study_hash, result, header, artifacts")


def _record(row: tuple) -> StudyRecord:
    (study_id, created_at, status, read_at, rank, group, score, sop_hash, study_hash,
     result, header, artifacts) = row
    return StudyRecord(id=study_id, created_at=created_at, status=status, read_at=read_at,
                       priority_rank=int(rank), priority_group=group, priority_score=float(score),
                       sop_hash=sop_hash, study_hash=study_hash, result=json.loads(result),
                       header=None if header is None else json.loads(header),
                       artifacts=tuple(json.loads(artifacts)))


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
