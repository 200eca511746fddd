"""Settings of the inference service (``cxrlab serve``).

Everything the service needs is one frozen :class:`ServeSettings`: the model run
directories, the SQLite file, the folder for heatmap/mask PNGs, the bearer token and the
limits. :meth:`ServeSettings.from_env` fills the secrets from the environment
(``CXRLAB_API_TOKEN``, ``CXRLAB_UID_SALT``) so they never appear on a command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxrlab.errors import ConfigError
from cxrlab.io import DEFAULT_MAX_PIXELS

TOKEN_ENV = "CXRLAB_API_TOKEN"
SALT_ENV = "CXRLAB_UID_SALT"
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
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
        inference_workers: Threads that decode and run the models (the event loop never does).
        cam_method: Grad-CAM variant of :mod:`cxrlab.explain.cam` for the heatmap.
        critical_findings: Classifier labels treated as critical (case-insensitive).
        uid_salt: Secret salt of the UID hashes; default: a random key kept in
            ``<db>.key`` (created on first use, mode 0600) so repeats are recognised
            across restarts.
        max_pixels: Largest image (rows x cols) decoded; larger ones are refused with 422.
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
    cam_method: str = "gradcam"
    critical_findings: tuple[str, ...] = DEFAULT_CRITICAL_FINDINGS
    uid_salt: bytes | None = field(default=None, repr=False)
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def artifact_dir(self) -> Path:
        """Where heatmap and mask PNGs are written."""
        return Path(self.artifacts) if self.artifacts else Path(f"{self.db}.artifacts")

    @property
    def salt_file(self) -> Path:
        """The file holding the generated UID salt when none is configured."""
        return Path(f"{self.db}.key")

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
        if self.max_pixels < 1:
            raise ConfigError("max_pixels", f"must be positive, got {self.max_pixels}")
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
        return settings
