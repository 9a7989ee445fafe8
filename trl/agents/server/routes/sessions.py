"""The trainer's side of recording: list sessions, read one's trajectory, free one (`GET /sessions`,
`GET /sessions/{sid}/trajectory`, `DELETE /sessions/{sid}`). Control plane: bearer token when one is set.

Not here: how sessions are stored and journaled (`../sessions.py`), how turns are recorded (`../recording.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .deps import gateway_of, require_token


router = APIRouter(dependencies=[Depends(require_token)])


@router.get("/sessions")
async def list_sessions(request: Request):
    return gateway_of(request).list_sessions()


@router.get("/sessions/{sid}/trajectory")
async def trajectory(sid: str, request: Request):
    return await gateway_of(request).trajectory(sid)


@router.delete("/sessions/{sid}")
async def delete_session(sid: str, request: Request):
    return gateway_of(request).delete_session(sid)
