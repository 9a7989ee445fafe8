"""Wire formats the gateway reads and writes itself: the bodies of its weight routes, OpenAI-style errors, and
server-sent-event streams of a finished turn.

Request bodies: only the ones the gateway acts on itself are models here (the `POST /weights/...` bodies, checked
strictly: `init_info` must be a JSON object or array, never coerced). The agent's OpenAI requests are deliberately
not: they are forwarded to vLLM, which validates them with its own models, so the gateway reads them as raw JSON
(`routes/deps.py: json_object`) and looks only at the few fields it needs (`n`, `stream`, `stream_options`).

Streaming on session routes: chat, Responses and Messages turns stream as the engine samples them
(`recording.py`, `messages_api.py`, `responses_api.py`); a text completion is generated whole, recorded, then sent
as an OpenAI stream (`completion_stream`: one text chunk, a finish chunk, an optional usage chunk, `[DONE]`).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from typing import Any, TypeVar

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from .upstream import encode
from .weight_sync import SyncError


class WeightsBody(BaseModel):
    """Body of `POST /weights/start` and `/weights/finish` (nothing read), and the base of the other weight bodies:
    unknown fields are ignored, the fields declared are strict (JSON types as given, no coercion)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class InitBody(WeightsBody):
    """`POST /weights/init`: vLLM's `init_weight_transfer_engine` body, or a list of one per replica."""

    init_info: dict | list


class UpdateBody(WeightsBody):
    """`POST /weights/update`: vLLM's `update_weights` body, or a list of one per replica."""

    update_info: dict | list


class LoraBody(WeightsBody):
    """`POST /weights/lora`: an adapter saved at `lora_path`, loaded on every replica as `lora_name`."""

    lora_path: str
    lora_name: str


class AbortBody(WeightsBody):
    """`POST /weights/abort`: why the trainer aborts (any JSON value, shown as text; optional)."""

    reason: Any = None

    @property
    def reason_text(self) -> str:
        return str(self.reason or "asked by the trainer")


Body = TypeVar("Body", bound=WeightsBody)


def parse_weights_body(model: type[Body], body: dict[str, Any]) -> Body:
    """`body` as a `model`; a missing or mistyped field is a 400 naming the field and the types it takes."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        annotation = model.model_fields[name].annotation
        kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        raise SyncError(400, f"`{name}` is required ({' or '.join(k.__name__ for k in kinds)})") from None


def error_body(status: int, message: str, type_: str | None = None, code: Any = None) -> dict[str, Any]:
    """`{"error": {"message", "type", "code"}}`, the OpenAI API's error."""
    default_type = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}.get(status)
    return {"error": {"message": message, "type": type_ or default_type or "ServerError", "code": code or status}}


def error_response(status: int, message: str, type_: str | None = None, code: Any = None) -> JSONResponse:
    """`error_body` with HTTP `status`."""
    return JSONResponse(error_body(status, message, type_, code), status_code=status)


def stream_error(status: int, message: str, type_: str | None = None) -> list[str]:
    """The end of an OpenAI stream whose turn failed after its first event: the error as an event, then `[DONE]`
    (as vLLM's own streams end on an error)."""
    return [sse(error_body(status, message, type_)), "data: [DONE]\n\n"]


def json_response(payload: Any) -> Response:
    """A 200 answer with `payload` as JSON, encoded by msgspec (answers carry token-id lists: see `upstream.py`)."""
    return Response(encode(payload), media_type="application/json")


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event of the OpenAI API: `data: <json>`."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


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
    yield sse({**base, "choices": [text_choice]})
    final = {"index": 0, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}
    if choice.get("token_ids") is not None:
        final["token_ids"] = choice["token_ids"]
    yield sse({**base, "choices": [final]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": response.get("usage")})
    yield "data: [DONE]\n\n"


class HeldWhitespace:
    """Streamed text deltas as the non-streamed answer shows them, for APIs whose text is a block of its own
    (Messages, Responses): whitespace before a tool call or at the end of a reply (the "\n\n" between `</think>`
    and `<tool_call>`) makes no block, so it is held until text follows in the same block, and dropped otherwise."""

    def __init__(self):
        self.pending = ""

    def shown(self, content: str | None, in_text_block: bool) -> str:
        """The text to send for a delta's `content` ("" for none yet)."""
        if not content:
            return ""
        text = self.pending + content
        if not in_text_block and not text.strip():
            self.pending = text
            return ""
        self.pending = ""
        return text
