"""The agent's OpenAI API at its session's base URL, `/sessions/{sid}/v1/`: every turn is recorded token-exactly.

The agent's base URL is its episode's identity, so unmodified agents are recorded and pinned to one replica. The
request body is forwarded to vLLM, which validates it: the gateway checks only that it is a JSON object of at most
`max_body_bytes`. A streamed turn is generated whole, recorded, then sent as an OpenAI stream (`protocol.py`).
Not here: the turn itself (`Gateway.run_turn`, then `recording.py`), unrecorded traffic (`unrecorded.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..protocol import chat_stream, completion_stream
from ..sessions import SESSION_ID
from ..upstream import GatewayError
from .deps import gateway_of, json_object


router = APIRouter()


async def recorded_turn(request: Request, sid: str, kind: str) -> Response:
    if not SESSION_ID.match(sid):  # before the body: a bad id is the error reported even when the body is bad too
        raise GatewayError(400, f"invalid session id {sid[:200]!r}: use 1-128 of [A-Za-z0-9._-]")
    body = await json_object(request)
    answer = await gateway_of(request).run_turn(sid, body, kind)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = chat_stream if kind == "chat" else completion_stream
        return StreamingResponse(chunks(answer, include_usage), media_type="text/event-stream")
    return JSONResponse(answer)


@router.post("/sessions/{sid}/v1/chat/completions")
async def session_chat(sid: str, request: Request):
    return await recorded_turn(request, sid, "chat")


@router.post("/sessions/{sid}/v1/completions")
async def session_completions(sid: str, request: Request):
    return await recorded_turn(request, sid, "completion")


@router.get("/sessions/{sid}/v1/models")
async def session_models(sid: str, request: Request):
    return await gateway_of(request).forward(request, "models")  # not recorded: agents list models before chatting
