"""Wire formats the gateway writes itself: OpenAI-style errors and server-sent-event streams of a finished turn.

Streaming on session routes: the gateway needs the whole turn before it can record it, so it generates the turn,
then sends it as a valid OpenAI stream (a role chunk, a content chunk, one chunk per tool call, a finish chunk,
an optional usage chunk, `[DONE]`). Clients that accumulate deltas (the `openai` client, litellm) see the same
message as without streaming; what they do not get is tokens before the turn ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi.responses import JSONResponse


def error_response(status: int, message: str, type_: str | None = None, code: Any = None) -> JSONResponse:
    """`{"error": {"message", "type", "code"}}` with HTTP `status`."""
    default_type = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}.get(status)
    body = {"error": {"message": message, "type": type_ or default_type or "ServerError", "code": code or status}}
    return JSONResponse(body, status_code=status)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def chat_stream(response: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """Server-sent events of a finished chat completion (`object: chat.completion.chunk`)."""
    base = {k: response.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
        return _sse({**base, "choices": [choice]})

    choice = response["choices"][0]
    message = choice["message"]
    yield chunk({"role": "assistant", "content": ""})
    if message.get("reasoning"):
        yield chunk({"reasoning": message["reasoning"], "reasoning_content": message["reasoning"]})
    if message.get("content"):
        yield chunk({"content": message["content"]}, logprobs=choice.get("logprobs"))
    for index, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    extra = {k: choice[k] for k in ("token_ids",) if choice.get(k) is not None}
    yield chunk({}, choice.get("finish_reason"), **extra)
    if include_usage:
        yield _sse({**base, "choices": [], "usage": response.get("usage")})
    yield "data: [DONE]\n\n"


def completion_stream(response: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """Server-sent events of a finished text completion (`object: text_completion`)."""
    base = {k: response.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "text_completion"
    choice = response["choices"][0]
    text_choice = {
        "index": 0,
        "text": choice.get("text", ""),
        "logprobs": choice.get("logprobs"),
        "finish_reason": None,
    }
    yield _sse({**base, "choices": [text_choice]})
    final = {"index": 0, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}
    if choice.get("token_ids") is not None:
        final["token_ids"] = choice["token_ids"]
    yield _sse({**base, "choices": [final]})
    if include_usage:
        yield _sse({**base, "choices": [], "usage": response.get("usage")})
    yield "data: [DONE]\n\n"
