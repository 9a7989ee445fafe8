"""The agent's API at its session's base URL, `/sessions/{sid}/v1/`: every turn is recorded token-exactly. OpenAI
chat and completions, the OpenAI Responses API and the Anthropic Messages API (the last two as chat turns).

The agent's base URL is its episode's identity, so unmodified agents are recorded and pinned to one replica. The
request body is forwarded to vLLM, which validates it: the gateway checks only that it is a JSON object of at most
`max_body_bytes`. A streamed turn (`stream: true`) is sent as the engine samples it (`Gateway.stream_turn`).
Not here: the turn itself (`Gateway.run_turn`, then `recording.py`), unrecorded traffic (`unrecorded.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..protocol import json_response
from ..sessions import SESSION_ID
from ..upstream import GatewayError
from .deps import gateway_of, json_object


router = APIRouter()


async def recorded_turn(request: Request, sid: str, kind: str) -> Response:
    if not SESSION_ID.match(sid):  # before the body: a bad id is the error reported even when the body is bad too
        raise GatewayError(400, f"invalid session id {sid[:200]!r}: use 1-128 of [A-Za-z0-9._-]")
    body = await json_object(request)
    gateway = gateway_of(request)
    if body.get("stream"):
        return StreamingResponse(await gateway.stream_turn(sid, body, kind), media_type="text/event-stream")
    return json_response(await gateway.run_turn(sid, body, kind))


@router.post("/sessions/{sid}/v1/chat/completions")
async def session_chat(sid: str, request: Request):
    return await recorded_turn(request, sid, "chat")


@router.post("/sessions/{sid}/v1/completions")
async def session_completions(sid: str, request: Request):
    return await recorded_turn(request, sid, "completion")


@router.post("/sessions/{sid}/v1/messages")
async def session_messages(sid: str, request: Request):
    return await recorded_turn(request, sid, "messages")  # Anthropic Messages API, recorded as a chat turn


@router.post("/sessions/{sid}/v1/responses")
async def session_responses(sid: str, request: Request):
    return await recorded_turn(request, sid, "responses")  # OpenAI Responses API, recorded as a chat turn


@router.get("/sessions/{sid}/v1/models")
async def session_models(sid: str, request: Request):
    return await gateway_of(request).forward(request, "models")  # not recorded: agents list models before chatting
