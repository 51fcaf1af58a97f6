"""``GET /health`` (liveness and readiness) and ``GET /v1/models`` (model and limits)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from hybridgl.server.routes import Service, Settings


def include(app: FastAPI) -> None:
    @app.get("/health", summary="Liveness and readiness (never needs the API key)")
    async def health(service: Service) -> JSONResponse:
        body = service.health()
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/v1/models", summary="The loaded model, its preset and the server limits")
    async def models(service: Service, settings: Settings) -> dict[str, Any]:
        info = service.model_info()
        return {
            "model": info,
            "ready": service.ready,
            "random_weights": bool(info.get("random_weights", False)),
            "device": info.get("device"),
            "preset": info.get("preset"),
            "defaults": {"top_k": settings.top_k, "guidance": settings.guidance},
            "search": settings.search_db is not None,  # POST /v1/search is served
            "limits": settings.limits(),
            "stats": service.stats(),
        }
