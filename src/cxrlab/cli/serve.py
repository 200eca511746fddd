"""``cxrlab serve``: the HTTP inference service under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from cxrlab.cli.errors import require_extra, user_errors

_err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve`` command to ``app``."""

    @app.command("serve")
    @user_errors
    def serve_cmd(
        classifier: Path = typer.Option(..., "--classifier", help="Classification run directory (or .pt checkpoint)."),
        screening: Path = typer.Option(None, "--screening", help="Normal-screening run directory (seed 003)."),
        pneumothorax: Path = typer.Option(None, "--pneumothorax", help="Pneumothorax run directory (seed 002)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
        db: Path = typer.Option(Path("cxrlab-serve.sqlite"), "--db",
                                help="SQLite worklist (created if missing); PNGs go to DB.artifacts/."),
        insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                              help="Serve without the bearer token (local use only)."),
        max_upload_mb: float = typer.Option(64.0, "--max-upload-mb", min=0.001,
                                            help="Largest accepted upload in MB (413 above)."),
        workers: int = typer.Option(2, "--workers", min=1, help="Inference threads (decode and preprocess when "
                                                                "batching)."),
        max_batch: int = typer.Option(8, "--max-batch", min=1,
                                      help="Most images of concurrent uploads in one model call (1: no batching, "
                                           "each upload alone)."),
        batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", min=0.0, max=10_000.0,
                                            help="Longest wait of a queued image for batch-mates, in ms."),
        backend: str = typer.Option("torch", "--backend", help="Inference backend: torch, onnx or onnx-int8 (export the runs first: cxrlab export RUN_DIR)."),
        dicom_port: int = typer.Option(None, "--dicom-port", min=0, max=65535,
                                       help="Also listen for DICOM C-ECHO/C-STORE on this port (same --host)."),
        ae_title: str = typer.Option("CXRLAB", "--ae-title", help="This node's AE title (listener and forwarding)."),
        allow_ae: list[str] = typer.Option([], "--allow-ae",
                                           help="Calling AE title the listener accepts (repeat; default: any)."),
        forward: list[str] = typer.Option([], "--forward", help="Send result objects by C-STORE to AE@HOST:PORT "
                                                                "(repeat for several destinations)."),
        forward_stow: list[str] = typer.Option([], "--forward-stow",
                                               help="Send result objects by STOW-RS to this DICOMweb base URL "
                                                    "(bearer token from CXRLAB_FORWARD_STOW_TOKEN)."),
        outbox: Path = typer.Option(None, "--outbox", help="Folder of results waiting to be sent [DB.outbox]."),
        forward_retry_max: float = typer.Option(60.0, "--forward-retry-max", min=0.01,
                                                help="Longest wait in seconds between retries of a result."),
    ) -> None:
        """Serve findings, screening decision, masks and heatmaps over HTTP, with a triage worklist.

        Every endpoint but GET /healthz needs `Authorization: Bearer $CXRLAB_API_TOKEN`. With
        --dicom-port the service is also a DICOM node (C-STORE in, STOW-RS at /dicomweb/studies),
        and --forward/--forward-stow send its SR, SEG and secondary capture to the PACS; see
        docs/hospital.md.
        """
        require_extra("serve", "fastapi", "uvicorn", "multipart")
        import uvicorn

        from cxrlab.serve.settings import ServeSettings

        settings = ServeSettings.from_env(
            classifier=classifier, screening=screening, pneumothorax=pneumothorax, db=db,
            insecure_no_auth=insecure_no_auth, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            inference_workers=workers, max_batch=max_batch, batch_wait_ms=batch_wait_ms, backend=backend,
            dicom_port=dicom_port, dicom_host=host, ae_title=ae_title,
            allow_ae=tuple(allow_ae), forward=tuple(forward), forward_stow=tuple(forward_stow), outbox=outbox,
            forward_retry_initial_s=min(1.0, forward_retry_max), forward_retry_max_s=forward_retry_max).check()
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.captureWarnings(True)

        from cxrlab.serve.app import create_app
        from cxrlab.serve.models import describe

        app_ = create_app(settings)
        logging.getLogger("cxrlab.serve").info("models loaded: %s", describe(app_.state.service.models))
        if insecure_no_auth:
            _err.print("[bold yellow]warning:[/] serving without authentication (--insecure-no-auth)")
        uvicorn.run(app_, host=host, port=port, log_level="info", access_log=True, timeout_graceful_shutdown=10)
