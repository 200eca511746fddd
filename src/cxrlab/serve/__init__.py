"""HTTP inference service (``cxrlab serve``): findings, screening decision, pneumothorax
mask and Grad-CAM heatmap per uploaded radiograph, and a persistent triage worklist.

Importing this package loads neither torch nor FastAPI; :func:`create_app` (from
:mod:`cxrlab.serve.app`) builds the FastAPI application from a :class:`ServeSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrlab.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cxrlab.serve.models import ModelSet

__all__ = ["ServeSettings", "create_app"]


def create_app(settings: ServeSettings, models: ModelSet | None = None) -> FastAPI:
    """See :func:`cxrlab.serve.app.create_app` (imported on call: FastAPI and torch are heavy)."""
    from cxrlab.serve.app import create_app as build

    return build(settings, models)
