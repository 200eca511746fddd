"""The HTTP inference service: radiographs in, findings, decisions, masks and heatmaps out.

``create_app(settings)`` builds a FastAPI application around one :class:`ModelSet`
(loaded once, at creation), one :class:`~cxrlab.serve.store.Store` (SQLite worklist) and
a thread pool that decodes uploads and runs the models, so the event loop only moves
bytes and the ``GET`` endpoints answer while uploads are being analysed. Uploads are
decoded in child processes (:class:`~cxrlab.serve.decode.DecodePool`), so a codec that
crashes costs a 422, not the service. With ``max_batch`` above 1 the pool threads only
decode and preprocess; one :class:`~cxrlab.serve.batching.Batcher` gathers the prepared
images of concurrent uploads into one call of each model (:meth:`ModelSet.analyze_batch`).

Endpoints (every one but ``GET /healthz`` needs ``Authorization: Bearer <token>``):

- ``GET /healthz``: liveness, the loaded models' versions and the batcher's batch sizes
  and queue waits.
- ``POST /v1/studies`` (multipart field ``file``: DICOM, PNG or JPEG): analyse and
  store; 413 above the upload limit, 422 naming the problem for an unreadable image.
  A DICOM whose SOP Instance UID (salted hash) was stored before is decoded (a corrupt
  copy gets 422) but not analysed again: the stored study comes back with ``repeat: true``.
- ``GET /v1/studies/{id}``, ``GET /v1/studies/{id}/heatmap.png``, ``.../mask.png``.
- ``POST /v1/studies/{id}/read``: mark read.
- ``GET /v1/worklist``: studies by priority (critical, abnormal, no finding, normal).
- ``GET /v1/studies/{id}/results/sr.dcm`` (``seg.dcm``, ``sc.dcm``): the results as DICOM
  (Comprehensive SR, pneumothorax SEG, heatmap secondary capture), built from the
  de-identified header; only for DICOM inputs, with the ``cxrlab[dicomnet]`` extra.
- ``POST /dicomweb/studies``: STOW-RS (multipart/related of application/dicom); each
  instance is analysed like an upload; the answer is the STOW-RS response dataset.
- ``GET /v1/outbox``: result objects waiting for, or refused by, the destinations.

With the extra installed, :class:`~cxrlab.serve.dicom_node.DicomNode` also runs the
DIMSE listener (``dicom_port``) and sends the results to ``forward``/``forward_stow``
through the persistent outbox.
- ``GET /openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from cxrlab import __version__
from cxrlab.errors import ConfigError, InputError, UnsupportedTransferSyntaxError
from cxrlab.io import XrayImage
from cxrlab.io.dicom import read_dicom_header
from cxrlab.serve import stow
from cxrlab.serve.batching import Batcher
from cxrlab.serve.decode import DecodePool
from cxrlab.serve.models import Analysis, ModelSet, PreparedImage
from cxrlab.serve.privacy import (
    RedactingFilter,
    UidHasher,
    identifying_values,
    install_log_redaction,
    load_or_create_salt,
    remove_log_redaction,
    safe_header,
)
from cxrlab.serve.settings import ServeSettings
from cxrlab.serve.store import DuplicateStudyError, Store, StudyRecord, utc_now

log = logging.getLogger(__name__)

ID_PATTERN = r"^[0-9a-f]{32}$"
_OPEN_PATHS = frozenset({"/healthz"})


# --------------------------------------------------------------------------- response schema


class Finding(BaseModel):
    label: str
    probability: float
    threshold: float = Field(description="The model's stored operating threshold for this label.")
    positive: bool = Field(description="probability >= threshold")


class LikelyDisease(BaseModel):
    disease: str
    probability: float


class Screening(BaseModel):
    decision: Literal["normal", "abnormal"]
    probability: float = Field(description="Platt-scaled probability of 'abnormal'.")
    threshold: float = Field(description="SVM score threshold of the stored operating point.")
    svm_score: float
    risk_group: str = Field(description="Seed 003 risk group of the abnormal call; 'none' when normal.")
    likely_diseases: list[LikelyDisease]


class Pneumothorax(BaseModel):
    present: bool
    probability: float = Field(description="Gate probability of pneumothorax (U-Net peak without a gate).")
    area_fraction: float
    rle: str = Field(description="Kaggle SIIM run-length encoding on the source image ('-1' = empty).")
    width: int
    height: int
    mask_url: str


class Heatmap(BaseModel):
    label: str
    probability: float
    method: str
    size: list[int]
    url: str


class Priority(BaseModel):
    rank: int = Field(description="0 critical, 1 abnormal, 2 no finding, 3 normal")
    group: Literal["critical", "abnormal", "no-finding", "normal"]
    score: float


class ImageInfo(BaseModel):
    format: str
    rows: int
    cols: int
    photometric: str | None = None
    view_position: str | None = None
    bits_stored: int | None = None


class StudyResult(BaseModel):
    study_id: str
    status: Literal["new", "read"]
    created_at: str
    read_at: str | None = None
    repeat: bool = Field(description="True when this upload repeats a stored SOP instance.")
    image: ImageInfo
    findings: list[Finding]
    screening: Screening | None = None
    pneumothorax: Pneumothorax | None = None
    heatmap: Heatmap
    priority: Priority
    models: dict[str, dict[str, Any]]
    dicom: dict[str, Any] | None = Field(None, description="The de-identified DICOM header (PS3.15 basic profile).")
    elapsed_ms: float | None = Field(None, description="Server time for this request, upload parsed to answer.")


class WorklistItem(BaseModel):
    study_id: str
    status: Literal["new", "read"]
    created_at: str
    read_at: str | None = None
    priority: Priority
    positive_findings: list[str]
    screening_decision: Literal["normal", "abnormal"] | None = None
    pneumothorax_present: bool | None = None
    url: str


class Worklist(BaseModel):
    total: int
    items: list[WorklistItem]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    studies: int
    models: dict[str, dict[str, Any]]
    batching: dict[str, Any] | None = Field(
        None, description="With --max-batch above 1: max_batch, wait_ms, batches, images, mean_batch, "
                          "batch_sizes (size -> count), queue_wait_ms and batch_ms (p50/p99/max of recent ones).")


class Problem(BaseModel):
    detail: str | list[dict[str, Any]]


class OutboxEntry(BaseModel):
    id: str
    name: str = Field(description="sr.dcm, seg.dcm or sc.dcm")
    study_id: str
    destination: str
    sop_class_uid: str
    created_at: str
    attempts: int
    next_attempt_at: str | None = None
    last_error: str | None = None
    state: Literal["pending", "failed"]


class OutboxSummary(BaseModel):
    destinations: list[str]
    pending: int
    failed: int
    items: list[OutboxEntry]


_ERRORS = {404: {"model": Problem, "description": "No such study or artifact"}}
_UPLOAD_ERRORS = {413: {"model": Problem, "description": "Upload larger than the limit"},
                  422: {"model": Problem, "description": "Not a readable image, or a malformed request"}}
_PNG = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}


# --------------------------------------------------------------------------- the service


class Service:
    """What the endpoints share: settings, models, store, UID hasher, log redactor, pool.

    :meth:`open` opens the store, the inference pool and the spool folder; :meth:`close`
    closes them. Both are idempotent, so the application's lifespan can be run again
    after a shutdown (test clients do that).
    """

    def __init__(self, settings: ServeSettings, models: ModelSet, hasher: UidHasher,
                 redactor: RedactingFilter, dicom: Any = None) -> None:
        self.settings = settings
        self.models = models
        self.hasher = hasher
        self.redactor = redactor
        self.dicom = dicom        # a cxrlab.serve.dicom_node.DicomNode, or None without the dicomnet extra
        self.spool = settings.artifact_dir / ".spool"
        self._store: Store | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.decoder: DecodePool | None = None   # child processes that decode uploads (serve/decode.py)
        self._batcher: Batcher[PreparedImage, Analysis] | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the service is closed (its lifespan has ended)")
        return self._store

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            raise RuntimeError("the service is closed (its lifespan has ended)")
        return self._pool

    @property
    def batcher(self) -> Batcher[PreparedImage, Analysis] | None:
        """The batcher of the models (None without batching or while closed)."""
        return self._batcher

    def open(self) -> Service:
        """Open the worklist, start the inference pool (and batcher), empty the spool folder."""
        if self._store is None:
            self._store = Store(self.settings.db, self.settings.artifact_dir)
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.pool_threads,
                                            thread_name_prefix="cxrlab-infer")
        if self.decoder is None:
            self.decoder = DecodePool(self.settings.decode_workers, max_pixels=self.settings.max_pixels,
                                      memory_mb=self.settings.decode_memory_mb,
                                      timeout_s=self.settings.decode_timeout_s)
        if self._batcher is None and self.settings.batching:
            self._batcher = Batcher(self.models.analyze_batch, self.settings.max_batch,
                                    self.settings.batch_wait_ms / 1000.0, name="cxrlab-batcher")
        return self

    def analyze(self, path: Path, image: XrayImage | None = None) -> Analysis:
        """Run the models on one file (in a pool thread): alone, or preprocessed here and
        batched with concurrent uploads.

        Args:
            path: The upload.
            image: The file already decoded (by the :class:`DecodePool`), or None to decode here.

        Raises:
            InputError: Not a readable image.
        """
        batcher = self._batcher
        if batcher is None:
            return self.models.analyze(path, image)
        return batcher(self.models.prepare(path, image))

    def process(self, path: Path) -> tuple[StudyRecord, bool]:
        """Analyse and store one upload (runs in the pool); returns ``(record, repeat)``.

        Raises:
            InputError: Not a readable image.
        """
        if self.decoder is None:
            raise RuntimeError("the service is closed (its lifespan has ended)")
        # decoded first, in a child process: a corrupt copy of a stored instance is refused (422),
        # never answered with the stored result
        image = self.decoder.read(path)
        ds = None
        sop_hash = study_hash = None
        if image.meta.format == "dicom":
            ds = read_dicom_header(path)  # every element parsed: ImageReadError (422) if corrupt
            self.redactor.remember(identifying_values(ds))
            sop_hash = self.hasher.hash(str(ds.get("SOPInstanceUID", "") or ""))
            study_hash = self.hasher.hash(str(ds.get("StudyInstanceUID", "") or ""))
            existing = self.store.find_sop(sop_hash)
            if existing is not None:
                return existing, True
        analysis = self.analyze(path, image)
        original = copy.deepcopy(ds) if self.dicom is not None and ds is not None else None
        header = safe_header(ds, self.hasher) if ds is not None else None      # de-identifies ds in place
        rank, group, score = analysis.priority(self.settings.critical_findings)
        record = StudyRecord(id=uuid.uuid4().hex, created_at=utc_now(), status="new", priority_rank=rank,
                             priority_group=group, priority_score=float(score), sop_hash=sop_hash,
                             study_hash=study_hash, header=header,
                             result=_result(analysis, self.models.versions()))
        files = {"heatmap.png": analysis.heatmap_png}
        if analysis.mask_png is not None:
            files["mask.png"] = analysis.mask_png
        if self.dicom is not None and original is not None:
            # queued for the destinations before the study is stored: a crash in between makes
            # the sender push again, and the repeat gives the same result UIDs
            files.update(self.dicom.results(record.id, original, record.result, analysis.heatmap_png, analysis.mask_png))
        try:
            stored = self.store.add(record, files)
        except DuplicateStudyError as dup:
            return dup.existing, True
        log.info("study %s stored: %s (%.3f)", stored.id, group, score)
        return stored, False

    def close(self) -> None:
        """Finish the running analyses, close the worklist, remove the spool folder."""
        pool, store, decoder, batcher = self._pool, self._store, self.decoder, self._batcher
        self._pool = self._store = self.decoder = None
        if pool is not None:
            pool.shutdown(wait=True)       # the batcher answers the analyses still waiting
        self._batcher = None
        if batcher is not None:
            batcher.close()
        if decoder is not None:
            decoder.close()
        if store is not None:
            store.close()
            shutil.rmtree(self.spool, ignore_errors=True)


def _dicom_header(path: Path) -> Any:
    """The DICOM header without pixels, or None when it is not a readable DICOM header (the
    STOW-RS response then lists the instance as failed)."""
    try:
        return read_dicom_header(path)
    except InputError:
        return None


def _result(analysis: Analysis, versions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"image": analysis.image, "findings": analysis.findings, "screening": analysis.screening,
            "pneumothorax": analysis.pneumothorax, "heatmap": analysis.heatmap, "models": versions}


def study_response(record: StudyRecord, repeat: bool = False, elapsed_ms: float | None = None) -> dict[str, Any]:
    """The JSON of a stored study (:class:`StudyResult`)."""
    base = f"/v1/studies/{record.id}"
    result = record.result
    pneumothorax = result.get("pneumothorax")
    if pneumothorax is not None:
        pneumothorax = {**pneumothorax, "mask_url": f"{base}/mask.png"}
    return {"study_id": record.id, "status": record.status, "created_at": record.created_at,
            "read_at": record.read_at, "repeat": repeat, "image": result["image"], "findings": result["findings"],
            "screening": result.get("screening"), "pneumothorax": pneumothorax,
            "heatmap": {**result["heatmap"], "url": f"{base}/heatmap.png"},
            "priority": {"rank": record.priority_rank, "group": record.priority_group,
                         "score": record.priority_score},
            "models": result["models"], "dicom": record.header,
            "elapsed_ms": None if elapsed_ms is None else round(elapsed_ms, 2)}


def worklist_item(record: StudyRecord) -> dict[str, Any]:
    """The worklist entry of a stored study (:class:`WorklistItem`)."""
    result = record.result
    screening, pneumothorax = result.get("screening"), result.get("pneumothorax")
    return {"study_id": record.id, "status": record.status, "created_at": record.created_at,
            "read_at": record.read_at,
            "priority": {"rank": record.priority_rank, "group": record.priority_group,
                         "score": record.priority_score},
            "positive_findings": [f["label"] for f in result["findings"] if f["positive"]],
            "screening_decision": None if screening is None else screening["decision"],
            "pneumothorax_present": None if pneumothorax is None else pneumothorax["present"],
            "url": f"/v1/studies/{record.id}"}


# --------------------------------------------------------------------------- middleware


class _Guard:
    """Pure ASGI middleware: bearer-token check (before any body is read) and upload size limit.

    A request over the limit is refused from its ``Content-Length`` without reading the
    body; a chunked one is cut off with 413 as soon as it passes the limit.
    """

    def __init__(self, app: Any, token: str | None, max_upload_bytes: int) -> None:
        self.app = app
        self.expected = None if token is None else f"bearer {token}".encode()
        self.limit = max_upload_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.expected is not None and scope["path"] not in _OPEN_PATHS and not self._authorized(scope):
            await JSONResponse({"detail": "missing or invalid bearer token"}, status_code=401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return hmac.compare_digest(scheme.lower() + b" " + token.strip(), self.expected)
        return False

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        await JSONResponse({"detail": f"upload larger than the limit of {self.limit} bytes"},
                           status_code=413, headers={"Connection": "close"})(scope, receive, send)


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"upload larger than the limit of {limit} bytes")


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- the app


def create_app(settings: ServeSettings, models: ModelSet | None = None) -> FastAPI:
    """Build the service: load the models (unless given), open the worklist, set up the pool.

    Args:
        settings: Checked with :meth:`ServeSettings.check` (refuses to run without a
            token unless ``insecure_no_auth``).
        models: Already loaded models (tests share one set between apps); default: load
            what ``settings`` names.

    Raises:
        ConfigError: Bad settings. MissingFileError / InputError: A model cannot be loaded.
        StoreError: The database cannot be opened.
    """
    settings.check()
    models = models if models is not None else ModelSet.from_settings(settings)
    hasher = UidHasher(settings.uid_salt or load_or_create_salt(settings.salt_file))
    redactor = RedactingFilter()
    service = Service(settings, models, hasher, redactor, _dicom_node(settings, hasher)).open()
    install_log_redaction(redactor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.open()
        install_log_redaction(redactor)      # handlers the server configured after create_app
        if not settings.auth_required:
            log.warning("serving WITHOUT authentication (--insecure-no-auth): local use only")
        if service.dicom is not None:
            service.dicom.start(service.process, service.pool, service.spool)
        yield
        if service.dicom is not None:
            service.dicom.stop()
        service.close()
        remove_log_redaction(redactor)

    app = FastAPI(title="cxrlab inference service", version=__version__, lifespan=lifespan,
                  description="Chest radiograph findings, screening decision, pneumothorax mask and "
                              "Grad-CAM heatmap per upload, with a persistent triage worklist.")
    app.state.service = service
    app.add_middleware(_Guard, token=settings.api_token if settings.auth_required else None,
                       max_upload_bytes=settings.max_upload_bytes)

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness (no authentication): the loaded models and the number of stored studies."""
        batcher = service.batcher
        return {"status": "ok", "version": __version__, "studies": service.store.count(),
                "models": service.models.versions(), "batching": None if batcher is None else batcher.stats()}

    @app.post("/v1/studies", response_model=StudyResult, responses=_UPLOAD_ERRORS, tags=["studies"])
    async def upload_study(file: UploadFile = File(..., description="DICOM, PNG or JPEG radiograph")
                           ) -> dict[str, Any]:
        """Analyse one radiograph and add it to the worklist."""
        started = time.perf_counter()
        path = await run_in_threadpool(_spool, file, service.spool)
        try:
            loop = asyncio.get_running_loop()
            record, repeat = await loop.run_in_executor(service.pool, service.process, path)
        except InputError as err:
            raise HTTPException(status_code=422, detail=f"not a readable image: {err.problem}") from None
        finally:
            path.unlink(missing_ok=True)
            await file.close()
        return study_response(record, repeat, (time.perf_counter() - started) * 1000.0)

    @app.get("/v1/studies/{study_id}", response_model=StudyResult, responses=_ERRORS, tags=["studies"])
    def get_study(study_id: str = PathParam(..., pattern=ID_PATTERN)) -> dict[str, Any]:
        """A stored study."""
        return study_response(_record(service, study_id))

    @app.get("/v1/studies/{study_id}/heatmap.png", response_class=FileResponse, responses={**_PNG, **_ERRORS},
             tags=["studies"])
    def get_heatmap(study_id: str = PathParam(..., pattern=ID_PATTERN)) -> FileResponse:
        """The Grad-CAM overlay (PNG, model input size)."""
        return _artifact(service, study_id, "heatmap.png")

    @app.get("/v1/studies/{study_id}/mask.png", response_class=FileResponse, responses={**_PNG, **_ERRORS},
             tags=["studies"])
    def get_mask(study_id: str = PathParam(..., pattern=ID_PATTERN)) -> FileResponse:
        """The pneumothorax mask (PNG 0/255, source size); 404 without a pneumothorax run."""
        return _artifact(service, study_id, "mask.png")

    @app.get("/v1/studies/{study_id}/results/{name}", response_class=FileResponse, tags=["studies"],
             responses={200: {"content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}}},
                        **_ERRORS})
    def get_result(study_id: str = PathParam(..., pattern=ID_PATTERN),
                   name: Literal["sr.dcm", "seg.dcm", "sc.dcm"] = PathParam(...)) -> FileResponse:
        """A result as DICOM (SR, pneumothorax SEG, heatmap secondary capture), de-identified;
        404 for non-DICOM inputs, without a mask (SEG), or without the dicomnet extra."""
        return _artifact(service, study_id, name, "application/dicom")

    @app.post("/dicomweb/studies", tags=["dicomweb"],
              responses={200: {"content": {stow.RESPONSE_MEDIA_TYPE: {}}, "description": "Every instance stored"},
                         202: {"description": "Some instances stored (FailedSOPSequence lists the others)"},
                         409: {"description": "No instance stored"}, 415: {"model": Problem}, 400: {"model": Problem},
                         413: {"model": Problem}})
    async def stow_rs(request: Request) -> Response:
        """STOW-RS: store instances (multipart/related; type="application/dicom"), each analysed
        like an upload. The answer is the Store Instances Response (DICOM JSON)."""
        body = await request.body()
        try:
            parts = stow.split_instances(request.headers.get("content-type"), body)
        except stow.StowError as err:
            raise HTTPException(status_code=err.status, detail=err.problem) from None
        stored: list[stow.StoredInstance] = []
        failed: list[stow.FailedInstance] = []
        loop = asyncio.get_running_loop()
        for part in parts:
            path = await run_in_threadpool(_spool_bytes, part.data, service.spool)
            try:
                ds = _dicom_header(path)
                sop_class = str(ds.get("SOPClassUID", "") or "") if ds is not None else ""
                sop_instance = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
                if part.content_type != stow.MEDIA_TYPE or ds is None or not sop_instance:
                    failed.append(stow.FailedInstance(sop_class, sop_instance, stow.FAILURE_CANNOT_UNDERSTAND))
                    continue
                try:
                    record, _ = await loop.run_in_executor(service.pool, service.process, path)
                except UnsupportedTransferSyntaxError:
                    failed.append(stow.FailedInstance(sop_class, sop_instance, stow.FAILURE_TRANSFER_SYNTAX))
                except InputError as err:
                    log.warning("STOW-RS: instance not analysed: %s", err.problem)
                    failed.append(stow.FailedInstance(sop_class, sop_instance, stow.FAILURE_CANNOT_UNDERSTAND))
                else:
                    stored.append(stow.StoredInstance(sop_class, sop_instance, f"/v1/studies/{record.id}"))
            finally:
                path.unlink(missing_ok=True)
        return JSONResponse(stow.response_dataset(stored, failed), status_code=stow.http_status(stored, failed),
                            media_type=stow.RESPONSE_MEDIA_TYPE)

    @app.get("/v1/outbox", response_model=OutboxSummary, tags=["dicom"])
    def outbox() -> dict[str, Any]:
        """Result objects waiting to be sent (with their attempts and last error) or refused for good."""
        if service.dicom is None:
            return {"destinations": [], "pending": 0, "failed": 0, "items": []}
        return service.dicom.outbox_summary()

    @app.post("/v1/studies/{study_id}/read", response_model=StudyResult, responses=_ERRORS, tags=["studies"])
    def mark_read(study_id: str = PathParam(..., pattern=ID_PATTERN)) -> dict[str, Any]:
        """Mark a study read (it stays in the worklist with status ``read``)."""
        record = service.store.mark_read(study_id)
        if record is None:
            raise HTTPException(status_code=404, detail=f"no study {study_id}")
        return study_response(record)

    @app.get("/v1/worklist", response_model=Worklist, tags=["worklist"])
    def worklist(status: Literal["new", "read"] | None = Query(None, description="Only studies with this status"),
                 limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9)) -> dict[str, Any]:
        """Studies by priority: critical, abnormal (by probability), no finding, normal."""
        records, total = service.store.worklist(status, limit, offset)
        return {"total": total, "items": [worklist_item(r) for r in records]}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _record(service: Service, study_id: str) -> StudyRecord:
    record = service.store.get(study_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"no study {study_id}")
    return record


def _artifact(service: Service, study_id: str, name: str, media_type: str = "image/png") -> FileResponse:
    path = service.store.artifact(study_id, name)
    if path is None:
        exists = service.store.get(study_id) is not None
        raise HTTPException(status_code=404, detail=f"study {study_id} has no {name}" if exists
                            else f"no study {study_id}")
    return FileResponse(path, media_type=media_type)


def _dicom_node(settings: ServeSettings, hasher: UidHasher) -> Any:
    """The DICOM side of the service, or None without the ``cxrlab[dicomnet]`` extra (an error
    then when the settings ask for a listener or a destination)."""
    try:
        from cxrlab.serve.dicom_node import DicomNode          # pynetdicom, highdicom, dicomweb-client
    except ImportError as err:
        if settings.speaks_dicom:
            raise ConfigError("--dicom-port/--forward", f"needs the dicomnet extra "
                                                        f"(pip install 'cxrlab[dicomnet]'): {err}") from err
        log.info("results as DICOM disabled: the dicomnet extra is not installed (%s)", err)
        return None
    return DicomNode(settings, hasher)


def _spool_bytes(data: bytes, folder: Path) -> Path:
    """Write one STOW-RS part to a private temporary file."""
    fd, name = tempfile.mkstemp(prefix="stow-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _spool(upload: UploadFile, folder: Path) -> Path:
    """Copy an upload to a private temporary file (the image readers take paths)."""
    fd, name = tempfile.mkstemp(prefix="upload-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, handle, 1 << 20)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _openapi(app: FastAPI, settings: ServeSettings) -> dict[str, Any]:
    """FastAPI's schema plus the bearer security scheme and the 401/413 answers."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    if not settings.auth_required:
        return schema
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "The token in CXRLAB_API_TOKEN"}
    schema["security"] = [{"bearer": []}]
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path in _OPEN_PATHS:
                operation["security"] = []
                continue
            operation.setdefault("responses", {})["401"] = {
                "description": "Missing or invalid bearer token",
                "content": {"application/json": {"schema": problem}}}
    schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
        "Problem", Problem.model_json_schema())
    return schema


__all__ = ["Service", "create_app", "study_response", "worklist_item"]
