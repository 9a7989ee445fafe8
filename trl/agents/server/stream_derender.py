"""A vLLM endpoint plugin that gives render servers a *stateful* streaming chat derender.

vLLM's `/v1/chat/completions/derender` with `stream: true` is stateless: the tool and reasoning parsers' state cannot
travel with the client, so every call builds new parsers and replays the reply so far through them. A reply of n
tokens then costs O(n^2) render-server CPU (RESULTS.md section 7: 55 ms per call at token 500 with hermes + qwen3).
This plugin keeps one parser and one incremental-detokenizer window per stream in the render server's memory, keyed
by a stream id the gateway picks, and feeds each token through them once. A call may carry several engine chunks
(those that queued up while the previous call was in flight) and a chunk several tokens (`stream_interval`); the
parser still sees one token per step, and each engine chunk gets one `chat.completion.chunk` back.

It attaches through vLLM's `vllm.endpoint_plugins` entry point (setup.py), which vLLM loads only when its name is in
`VLLM_PLUGINS` (`process.RenderServer` sets it). The gateway falls back to vLLM's stateless route when a render server
answers 404 (started without the plugin). It is not a general server: streams live in one process's memory, so a
stream's calls must reach the render server that started it (the gateway pins one render server per replica). The
parsing runs on the render server's event loop (about 0.3 ms per token on the CPU build), not in an executor: the
tokenizer and parsers hold the GIL anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse


ROUTE = "/trl/v1/chat/completions/derender_stream"
IDLE_SECONDS = 600.0  # a stream not fed for this long (its client gone) is dropped
router = APIRouter()


class _Detokenizer:
    """vLLM's incremental detokenizer (`detokenize_incrementally`) over a window kept short: text one token at a time,
    multi-byte characters split over tokens included."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[str] = []
        self.prefix_offset = self.read_offset = 0

    def text(self, ids: list[int]) -> str:
        from vllm.tokenizers.detokenizer_utils import detokenize_incrementally

        parts = []
        for token_id in ids:
            new, text, self.prefix_offset, self.read_offset = detokenize_incrementally(
                self.tokenizer, [token_id], self.tokens, self.prefix_offset, self.read_offset,
                skip_special_tokens=self.skip_special_tokens,
            )  # fmt: skip
            self.tokens += new
            parts.append(text)
        # nothing before prefix_offset is read again: keep the window short
        self.tokens = self.tokens[self.prefix_offset :]
        self.read_offset -= self.prefix_offset
        self.prefix_offset = 0
        return "".join(parts)


@dataclass
class _Stream:
    chat_request: Any
    parser: Any  # None: the render server has no tool or reasoning parser (plain text, as vLLM's route)
    detokenizer: _Detokenizer
    prompt_token_ids: list[int]
    position: int = 0  # output tokens fed so far
    role_sent: bool = False
    tools_streamed: bool = False
    last_used: float = field(default_factory=time.monotonic)


def _new_stream(derenderer: Any, chat_request: Any, prompt_token_ids: list[int]) -> _Stream:
    tokenizer = derenderer.renderer.get_tokenizer()
    if derenderer.parser is None:
        return _Stream(chat_request, None, _Detokenizer(tokenizer, chat_request.skip_special_tokens), prompt_token_ids)
    kwargs: dict[str, Any] = {}
    if not derenderer.use_harmony:
        params = chat_request.build_chat_params(derenderer.chat_template, derenderer.chat_template_content_format)
        kwargs = params.with_defaults(derenderer.default_chat_template_kwargs).chat_template_kwargs
    parser = derenderer.parser(
        tokenizer, chat_request.tools, chat_template_kwargs=kwargs, model_config=derenderer.model_config
    )
    # the parsers need special tokens in the text (tool-call and reasoning markers), as in vLLM's own route
    return _Stream(chat_request, parser, _Detokenizer(tokenizer, False), prompt_token_ids)


def _delta(stream: _Stream, ids: list[int], finished: bool) -> Any:
    """One engine chunk through the stream's detokenizer and parser, a token at a time (vLLM's streaming parsers
    expect one sampled token per step: hermes loses the start of a call's arguments when one delta ends the function
    name and starts the arguments), merged into one `DeltaMessage`."""
    from vllm.entrypoints.generate.base.protocol import DeltaMessage

    if stream.parser is None:
        stream.position += len(ids)
        return DeltaMessage(content=stream.detokenizer.text(ids) or None)
    request, merged = stream.chat_request, DeltaMessage()
    for k, token_id in enumerate(ids or ([None] if finished else [])):
        step = [] if token_id is None else [token_id]  # None: a last chunk without tokens flushes the parser
        text = stream.detokenizer.text(step)
        stream.position += len(step)
        last = finished and k == max(len(ids), 1) - 1
        delta = stream.parser.parse_delta(text, step, request, prompt_token_ids=stream.prompt_token_ids, finished=last)
        if delta is not None:
            _merge(merged, delta)
    return merged


def _merge(into: Any, delta: Any) -> None:
    """Append `delta` (a `DeltaMessage`) to `into`: texts joined, a tool call's pieces joined while its index lasts."""
    for name in ("content", "reasoning"):
        if getattr(delta, name):
            setattr(into, name, (getattr(into, name) or "") + getattr(delta, name))
    for call in delta.tool_calls:
        last = into.tool_calls[-1] if into.tool_calls else None
        if last is None or last.index != call.index:
            into.tool_calls.append(call)
            continue
        last.id, last.type = last.id or call.id, last.type or call.type
        if call.function is None:
            continue
        if last.function is None:
            last.function = call.function
            continue
        for name in ("name", "arguments"):
            if getattr(call.function, name):
                setattr(last.function, name, (getattr(last.function, name) or "") + getattr(call.function, name))


def _chunk(stream: _Stream, engine_chunk: dict[str, Any], model: str) -> dict[str, Any]:
    """One engine chunk (`/inference/v1/generate`, streamed) as the `chat.completion.chunk` vLLM's route would send."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionResponseStreamChoice,
        ChatCompletionStreamResponse,
    )
    from vllm.entrypoints.serve.utils.tool_calls_utils import maybe_filter_parallel_tool_calls

    choices = []
    for choice in (engine_chunk.get("choices") or [])[:1]:
        finish_reason = choice.get("finish_reason")
        delta = _delta(stream, choice.get("token_ids") or [], finish_reason is not None)
        stream.tools_streamed |= bool(delta.tool_calls)
        if not stream.role_sent:
            delta.role, stream.role_sent = "assistant", True
        named = type(stream.chat_request.tool_choice) is ChatCompletionNamedToolChoiceParam
        if finish_reason is not None and stream.tools_streamed and not named:
            finish_reason = "tool_calls"
        out = ChatCompletionResponseStreamChoice(
            index=choice.get("index", 0), delta=delta, finish_reason=finish_reason
        )
        choices.append(maybe_filter_parallel_tool_calls(out, stream.chat_request))
    response = ChatCompletionStreamResponse(
        id=engine_chunk.get("request_id") or "", model=model, choices=choices, metrics=engine_chunk.get("metrics")
    )
    return response.model_dump()


def _error(status: int, message: str) -> JSONResponse:
    kind = "NotFoundError" if status == 404 else "BadRequestError" if status == 400 else "ConflictError"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)


@router.post(ROUTE)
async def derender_stream(request: Request) -> JSONResponse:
    """Body: `stream_id`; `position` (output tokens fed before this call); `generate_chunks` (engine chunks, in
    order); `chat_request` and `prompt_token_ids` (the turn's header: tells the reasoning parser whether the prompt
    left reasoning open) on the first call; `model`. Answers `{"chunks": [...]}`, one per engine chunk. 409 when the
    stream is unknown (dropped, or this is another render server) or out of step; the stream is then dropped."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body = await request.json()
    streams: dict[str, _Stream] = request.app.state.trl_streams
    sid, position, engine_chunks = body.get("stream_id"), body.get("position"), body.get("generate_chunks")
    if not isinstance(sid, str) or not isinstance(position, int) or not isinstance(engine_chunks, list):
        return _error(400, "send stream_id (string), position (integer) and generate_chunks (list)")
    if position == 0 and sid not in streams:
        try:
            chat_request = ChatCompletionRequest.model_validate(body.get("chat_request"))
        except ValueError as exc:
            return _error(400, f"chat_request: {exc}")
        now = time.monotonic()  # streams whose client left are dropped as new ones come
        for old in [key for key, s in streams.items() if now - s.last_used > IDLE_SECONDS]:
            streams.pop(old, None)
        streams[sid] = _new_stream(
            request.app.state.online_derenderer, chat_request, body.get("prompt_token_ids") or []
        )
    stream = streams.get(sid)
    if stream is None or stream.position != position:
        streams.pop(sid, None)
        held = "unknown" if stream is None else f"at output token {stream.position}"
        return _error(409, f"stream {sid!r} is {held}, the call is at {position}")
    model = body.get("model") or ""
    try:
        chunks = [_chunk(stream, engine_chunk, model) for engine_chunk in engine_chunks]
    except Exception:
        streams.pop(sid, None)  # a parser that failed half-way has no state worth keeping
        raise
    stream.last_used = time.monotonic()
    if any(c.get("finish_reason") is not None for e in engine_chunks for c in e.get("choices") or []):
        streams.pop(sid, None)
    return JSONResponse({"chunks": chunks})


class Plugin:
    """The `vllm.endpoint_plugins` entry: the route above, on render servers only."""

    name = "trl_agents_derender"  # as in setup.py
    required_tasks = ("render",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        state.trl_streams = {}
