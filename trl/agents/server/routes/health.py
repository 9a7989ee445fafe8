"""`GET /health` (one answer for all replicas and render servers: 503 with the reason when any is down) and
`GET /metrics` (sessions, turns, tokens, forks, errors, weight syncs, per-replica load; Prometheus text format).
No token needed (not control plane).

Not here: the health checks themselves (`Router.check_health`, polled by `Gateway.health_loop`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .deps import gateway_of


router = APIRouter()


@router.get("/health")
async def health(request: Request):
    status, body = gateway_of(request).health()
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def metrics(request: Request):
    return PlainTextResponse(gateway_of(request).metrics_text(), media_type="text/plain; version=0.0.4")
