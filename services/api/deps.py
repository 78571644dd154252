"""The one dependency every route takes: the daemon's Service, stored on the app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.api.service import Service


async def service_of(request: Request) -> Service:
    # async: FastAPI would run a plain function in its thread pool, for one attribute read.
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(service_of)]
