"""Route modules of the HTTP server, each included by the app factory.

Every module here has ``include(app)``, which adds its routes (and mounts) to the FastAPI
app; :data:`hybridgl.server.app.ROUTE_MODULES` lists the ones the app serves. A new
feature's endpoints are a new module with ``include(app)``, added to that list (or passed
to ``create_app(routes=...)``). Routes reach the model through :func:`get_service`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hybridgl.server.service import ModelService
from hybridgl.server.settings import ServerSettings


def get_service(request: Request) -> ModelService:
    """The app's :class:`ModelService` (a FastAPI dependency)."""
    return request.app.state.service


def get_settings(request: Request) -> ServerSettings:
    """The app's :class:`ServerSettings` (a FastAPI dependency)."""
    return request.app.state.settings


Service = Annotated[ModelService, Depends(get_service)]
Settings = Annotated[ServerSettings, Depends(get_settings)]
