"""HTTP API and web demo (needs the ``server`` extra: fastapi, uvicorn, python-multipart).

``create_app(segmenter, settings)`` builds the FastAPI app; ``hybridgl serve`` runs it.
See docs/SERVER.md for the API. :class:`ServerSettings` imports without the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridgl.server.settings import ServerSettings

if TYPE_CHECKING:
    from hybridgl.server.app import create_app
    from hybridgl.server.service import ModelService

__all__ = ["ModelService", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from hybridgl.server.app import create_app

        return create_app
    if name == "ModelService":
        from hybridgl.server.service import ModelService

        return ModelService
    raise AttributeError(f"module 'hybridgl.server' has no attribute {name!r}")
