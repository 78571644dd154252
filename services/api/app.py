"""The FastAPI application over one Service."""

from __future__ import annotations

from fastapi import FastAPI

import npllm
from services.api.errors import install_error_handlers
from services.api.guard import TcpGuard
from services.api.middleware import BodyGuard
from services.api.routers import (
    adapters,
    alerts,
    auth,
    cerebellum,
    chat,
    completions,
    dashboard,
    datasets,
    embeddings,
    feedback,
    memories,
    metrics,
    models,
    modulator,
    ollama,
    replay,
    sleep,
    status,
)
from services.api.service import Service
from services.api.spec import errors, install_openapi

# The order routes are matched in (and listed in /openapi.json); each router keeps its own
# routes in matching order (/v1/adapters/prune is declared after /v1/adapters/{name}, which
# matches only DELETE; /v1/datasets/{name:path} before /v1/datasets/{name}/examples).
ROUTERS = (
    chat,
    completions,
    models,
    status,
    memories,
    adapters,
    modulator,
    cerebellum,
    sleep,
    feedback,
    replay,
    datasets,
    auth,
    alerts,
    embeddings,
    ollama,
    metrics,
    dashboard,
)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over one Service."""
    app = FastAPI(
        title="npllm",
        version=npllm.__version__,
        description="Local sleep-cycle memory daemon: OpenAI-compatible chat completions "
        "with retrieval over pgvector, plus memories and status.",
        responses=errors(400, 401, 403, 405, 415, 503),
        # No /docs or /redoc: their pages load scripts from a CDN. /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    install_openapi(app, service.settings)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(
        BodyGuard,
        max_bytes=service.settings.server.max_body_bytes,
        max_import_bytes=service.settings.server.max_import_bytes,
        observe=service.metrics.observe_request,
    )
    # Outermost: over TCP nothing (not even the body) is read before Host, Origin and key.
    app.add_middleware(
        TcpGuard,
        key_file=service.key_file,
        allowed_hosts=tuple(service.settings.server.allowed_hosts),
        logins=service.logins,
    )
    for module in ROUTERS:
        app.include_router(module.router)
    return app
