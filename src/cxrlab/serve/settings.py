"""Settings of the inference service (``cxrlab serve``).

Everything the service needs is one frozen :class:`ServeSettings`: the model run
directories, the SQLite file, the folder for heatmap/mask PNGs, the bearer token and the
limits. :meth:`ServeSettings.from_env` fills the secrets from the environment
(``CXRLAB_API_TOKEN``, ``CXRLAB_UID_SALT``, ``CXRLAB_FORWARD_STOW_TOKEN``) so they never appear on a command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxrlab.config.base import look_up_option
from cxrlab.errors import ConfigError
from cxrlab.io import DEFAULT_MAX_PIXELS
from cxrlab.serve.destinations import STOW_TOKEN_ENV, Destination, check_ae_title, parse_destinations

TOKEN_ENV = "CXRLAB_API_TOKEN"
SALT_ENV = "CXRLAB_UID_SALT"
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
"""Inference backends the service can run: :data:`cxrlab.inference.backends.BACKENDS` (kept
import-light here; a test checks the two agree)."""
DEFAULT_CRITICAL_FINDINGS: tuple[str, ...] = ("Pneumothorax",)
"""Classifier labels whose positive decision puts a study at the top of the worklist."""


@dataclass(frozen=True)
class ServeSettings:
    """What one service instance runs with.

    Attributes:
        classifier: Run directory (or ``.pt`` checkpoint) of the multi-label classifier.
        screening: Run directory of a normal-screening ensemble (seed 003), optional.
        pneumothorax: Run directory of a pneumothorax gate + U-Net (seed 002), optional.
        db: The SQLite file holding the worklist and results (created when missing).
        artifacts: Folder for heatmap and mask PNGs; default ``<db>.artifacts`` beside the
            database.
        api_token: The bearer token every endpoint but ``GET /healthz`` requires.
        insecure_no_auth: Serve without authentication (local use only).
        max_upload_bytes: Largest accepted request body of an upload (413 above).
        inference_workers: Threads that decode and run the models (the event loop never does);
            with batching they decode and preprocess, and ``max_batch`` more threads wait
            for batch results.
        max_batch: Most images gathered from concurrent requests into one model call
            (:mod:`cxrlab.serve.batching`); 1 runs each upload alone (no batcher).
        batch_wait_ms: Longest wait of the oldest queued image for batch-mates.
        backend: Inference backend of the models: ``torch`` or ``onnx``.
        cam_method: Grad-CAM variant of :mod:`cxrlab.explain.cam` for the heatmap.
        critical_findings: Classifier labels treated as critical (case-insensitive).
        uid_salt: Secret salt of the UID hashes; default: a random key kept in
            ``<db>.key`` (created on first use, mode 0600) so repeats are recognised
            across restarts.
        max_pixels: Largest image (rows x cols) decoded; larger ones are refused with 422.
        dicom_port: Port of the DICOM (C-ECHO/C-STORE) listener; None: no listener.
        dicom_host: Address the DICOM listener binds.
        ae_title: This node's AE title (called AE title the listener answers to, calling
            AE title of the forwarding C-STOREs).
        allow_ae: Calling AE titles the listener accepts; empty: any.
        forward: ``AE@HOST:PORT`` destinations of the result objects (C-STORE).
        forward_stow: STOW-RS base URLs the result objects are sent to.
        forward_stow_token: Bearer token of the STOW-RS destinations (from
            ``CXRLAB_FORWARD_STOW_TOKEN``).
        outbox: Folder of results waiting to be sent; default ``<db>.outbox``.
        forward_retry_initial_s: Wait after the first failed send; doubled per failure ...
        forward_retry_max_s: ... up to this.
        decode_workers: Child processes that decode uploads (:mod:`cxrlab.serve.decode`),
            so a decoder that crashes costs a 422 and a fresh child, not the service; 0
            decodes in the service process (tests, development).
        decode_memory_mb: Address space each decode child may add after its imports
            (``RLIMIT_AS``).
        decode_timeout_s: Seconds one file may take in a decode child before it is
            killed (422 naming the file).
    """

    classifier: Path
    screening: Path | None = None
    pneumothorax: Path | None = None
    db: Path = Path("cxrlab-serve.sqlite")
    artifacts: Path | None = None
    api_token: str | None = field(default=None, repr=False)
    insecure_no_auth: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    inference_workers: int = 2
    max_batch: int = 1
    batch_wait_ms: float = 10.0
    backend: str = "torch"
    cam_method: str = "gradcam"
    critical_findings: tuple[str, ...] = DEFAULT_CRITICAL_FINDINGS
    uid_salt: bytes | None = field(default=None, repr=False)
    max_pixels: int = DEFAULT_MAX_PIXELS
    dicom_port: int | None = None
    dicom_host: str = "127.0.0.1"
    ae_title: str = "CXRLAB"
    allow_ae: tuple[str, ...] = ()
    forward: tuple[str, ...] = ()
    forward_stow: tuple[str, ...] = ()
    forward_stow_token: str | None = field(default=None, repr=False)
    outbox: Path | None = None
    forward_retry_initial_s: float = 1.0
    forward_retry_max_s: float = 60.0
    decode_workers: int = 2
    decode_memory_mb: int = 4096
    decode_timeout_s: float = 60.0

    @property
    def artifact_dir(self) -> Path:
        """Where heatmap and mask PNGs are written."""
        return Path(self.artifacts) if self.artifacts else Path(f"{self.db}.artifacts")

    @property
    def salt_file(self) -> Path:
        """The file holding the generated UID salt when none is configured."""
        return Path(f"{self.db}.key")

    @property
    def outbox_dir(self) -> Path:
        """Where results wait to be sent (private to the service user)."""
        return Path(self.outbox) if self.outbox else Path(f"{self.db}.outbox")

    @property
    def destinations(self) -> list[Destination]:
        """The parsed ``forward`` and ``forward_stow`` destinations."""
        return parse_destinations(self.forward, self.forward_stow)

    @property
    def speaks_dicom(self) -> bool:
        """True when a DICOM listener or a result destination is configured (needs ``cxrlab[dicomnet]``)."""
        return self.dicom_port is not None or bool(self.forward) or bool(self.forward_stow)

    @property
    def batching(self) -> bool:
        """True when concurrent uploads share model calls (``max_batch`` above 1)."""
        return self.max_batch > 1

    @property
    def pool_threads(self) -> int:
        """Threads of the worker pool: the decoders, plus one waiter per batch slot when batching."""
        return self.inference_workers + (self.max_batch if self.batching else 0)

    @property
    def auth_required(self) -> bool:
        return not self.insecure_no_auth

    def check(self) -> ServeSettings:
        """Validate the settings; returns ``self``.

        Raises:
            ConfigError: No token while authentication is on, a limit out of range, or a
                model path that does not exist.
        """
        if self.auth_required and not self.api_token:
            raise ConfigError(TOKEN_ENV, "no API token: set CXRLAB_API_TOKEN to the bearer token clients "
                                         "must send, or pass --insecure-no-auth for local use")
        if self.api_token is not None and (len(self.api_token) < 8 or any(c.isspace() for c in self.api_token)):
            raise ConfigError(TOKEN_ENV, "the API token must be at least 8 characters without spaces")
        if self.max_upload_bytes < 1:
            raise ConfigError("max_upload_bytes", f"must be positive, got {self.max_upload_bytes}")
        if self.inference_workers < 1:
            raise ConfigError("inference_workers", f"must be at least 1, got {self.inference_workers}")
        if self.max_batch < 1:
            raise ConfigError("--max-batch", f"must be at least 1, got {self.max_batch}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ConfigError("--batch-wait-ms", f"must be 0-10000 ms, got {self.batch_wait_ms}")
        look_up_option(self.backend, BACKENDS, "--backend")
        if self.max_pixels < 1:
            raise ConfigError("max_pixels", f"must be positive, got {self.max_pixels}")
        if self.decode_workers < 0 or self.decode_memory_mb < 1 or self.decode_timeout_s <= 0:
            raise ConfigError("decode_workers", "decode_workers must be >= 0, decode_memory_mb >= 1 and "
                                                f"decode_timeout_s > 0, got {self.decode_workers}, "
                                                f"{self.decode_memory_mb}, {self.decode_timeout_s}")
        if self.dicom_port is not None and not 0 <= self.dicom_port <= 65535:
            raise ConfigError("--dicom-port", f"must be 0-65535, got {self.dicom_port}")
        check_ae_title(self.ae_title, "--ae-title")
        for title in self.allow_ae:
            check_ae_title(title, "--allow-ae")
        parse_destinations(self.forward, self.forward_stow)      # ConfigError when one is malformed
        if not 0 < self.forward_retry_initial_s <= self.forward_retry_max_s:
            raise ConfigError("forward_retry_initial_s", "must be positive and at most forward_retry_max_s, got "
                                                         f"{self.forward_retry_initial_s} / {self.forward_retry_max_s}")
        for name in ("classifier", "screening", "pneumothorax"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise ConfigError(f"--{name}", f"{path} does not exist")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **values: object) -> ServeSettings:
        """Settings from keyword values, the token and salt taken from the environment.

        Args:
            env: The environment (default ``os.environ``); ``CXRLAB_API_TOKEN`` gives
                ``api_token`` and ``CXRLAB_UID_SALT`` gives ``uid_salt`` unless passed.
            **values: Any field of :class:`ServeSettings`.
        """
        env = os.environ if env is None else env
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.api_token is None and env.get(TOKEN_ENV):
            settings = replace(settings, api_token=env[TOKEN_ENV])
        if settings.uid_salt is None and env.get(SALT_ENV):
            settings = replace(settings, uid_salt=env[SALT_ENV].encode())
        if settings.forward_stow_token is None and env.get(STOW_TOKEN_ENV):
            settings = replace(settings, forward_stow_token=env[STOW_TOKEN_ENV])
        return settings
