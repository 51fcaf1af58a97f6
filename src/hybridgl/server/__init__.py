"""HTTP API and web demo (needs the ``server`` extra: fastapi, uvicorn, python-multipart).

``create_app(segmenter, settings)`` builds the FastAPI app; ``hybridgl serve`` runs it.
See docs/SERVER.md for the API.
"""

from hybridgl.server.app import BackgroundServer, ServerSettings, create_app

__all__ = ["BackgroundServer", "ServerSettings", "create_app"]
