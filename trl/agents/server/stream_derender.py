"""WIP (spike, not wired in): a vLLM endpoint plugin that gives the render server a *stateful* streaming derender.

vLLM's `/v1/chat/completions/derender` with `stream: true` rebuilds the tool and reasoning parsers on every call and
replays the reply so far through them (its state cannot travel with the client), so a reply of n tokens costs
O(n^2) (RESULTS.md section 7). This plugin keeps one parser and one detokenizer state per stream in the render
server's memory, keyed by a stream id the gateway picks, and feeds each engine chunk once. It attaches through
vLLM's `vllm.endpoint_plugins` hook (loaded only when named in `VLLM_PLUGINS`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse


router = APIRouter()
IDLE_SECONDS = 600.0  # a stream not fed for this long is dropped


@dataclass
class _Stream:
    parser: Any
    chat_request: Any
    detok: Any  # vLLM's DerenderStreamState, used for its incremental-detokenizer window only
    position: int = 0  # output tokens fed so far
    role_sent: bool = False
    tools_streamed: bool = False
    last_used: float = field(default_factory=time.monotonic)


def _new_stream(derenderer: Any, chat_request: Any) -> _Stream:
    from vllm.entrypoints.scale_out.token_in_token_out.protocol import DerenderStreamState

    kwargs: dict[str, Any] = {}
    if not derenderer.use_harmony:
        params = chat_request.build_chat_params(derenderer.chat_template, derenderer.chat_template_content_format)
        kwargs = params.with_defaults(derenderer.default_chat_template_kwargs).chat_template_kwargs
    parser = derenderer.parser(
        derenderer.renderer.get_tokenizer(), chat_request.tools, chat_template_kwargs=kwargs,
        model_config=derenderer.model_config,
    )  # fmt: skip
    return _Stream(parser, chat_request, DerenderStreamState())


def _feed(derenderer: Any, stream: _Stream, chunk: Any, prompt_token_ids: list[int], model: str) -> dict:
    """One engine chunk through the stream's parser: the `chat.completion.chunk` to send."""
    from vllm.entrypoints.generate.base.protocol import DeltaMessage
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionResponseStreamChoice,
        ChatCompletionStreamResponse,
    )
    from vllm.entrypoints.serve.utils.tool_calls_utils import maybe_filter_parallel_tool_calls

    choices = []
    for choice in chunk.choices[:1]:
        ids = choice.token_ids or []
        finished = choice.finish_reason is not None
        delta = None
        if ids or finished:
            text = ""
            if ids:
                tokenizer = derenderer.renderer.get_tokenizer()
                text, stream.detok = derenderer._detokenize_delta(
                    tokenizer, ids, stream.detok, skip_special_tokens=False
                )
            delta = stream.parser.parse_delta(text, ids, stream.chat_request, prompt_token_ids=prompt_token_ids,
                                              finished=finished)  # fmt: skip
        stream.position += len(ids)
        delta = delta or DeltaMessage()
        stream.tools_streamed |= bool(delta.tool_calls)
        if not stream.role_sent:
            delta.role, stream.role_sent = "assistant", True
        finish_reason = choice.finish_reason
        named = type(stream.chat_request.tool_choice) is ChatCompletionNamedToolChoiceParam
        if finish_reason is not None and stream.tools_streamed and not named:
            finish_reason = "tool_calls"
        out = ChatCompletionResponseStreamChoice(index=choice.index, delta=delta, finish_reason=finish_reason)
        choices.append(maybe_filter_parallel_tool_calls(out, stream.chat_request))
    response = ChatCompletionStreamResponse(id=chunk.request_id, model=model, choices=choices, metrics=chunk.metrics)
    return response.model_dump()


@router.post("/trl/v1/chat/completions/derender_stream")
async def derender_stream(request: Request) -> JSONResponse:
    """Body: `stream_id`, `position` (output tokens sent before this chunk), `generate_chunk`, `chat_request`
    (first call only), `prompt_token_ids`. Answers `{"chunk": ...}`; 409 when the stream is unknown or out of step
    (the caller then falls back to vLLM's own streaming derender)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.scale_out.token_in_token_out.protocol import GenerateStreamResponse

    body = await request.json()
    state = request.app.state
    derenderer = state.online_derenderer
    streams: dict[str, _Stream] = state.trl_streams
    sid = str(body.get("stream_id"))
    stream = streams.get(sid)
    if stream is None and body.get("position", 0) == 0 and body.get("chat_request") is not None:
        stream = streams[sid] = _new_stream(derenderer, ChatCompletionRequest.model_validate(body["chat_request"]))
    if stream is None or stream.position != body.get("position", 0):
        return JSONResponse({"error": {"message": f"unknown stream {sid!r} or out of step", "code": 409}}, 409)
    chunk = GenerateStreamResponse.model_validate(body["generate_chunk"])
    model = body.get("model") or getattr(chunk, "model", None) or ""
    answer = _feed(derenderer, stream, chunk, body.get("prompt_token_ids") or [], model)
    stream.last_used = time.monotonic()
    if any(c.finish_reason is not None for c in chunk.choices):
        streams.pop(sid, None)
    for old in [k for k, s in streams.items() if time.monotonic() - s.last_used > IDLE_SECONDS]:
        streams.pop(old, None)
    return JSONResponse({"chunk": answer})


class Plugin:
    """`vllm.endpoint_plugins` entry: the route above, on render servers."""

    name = "trl_agents_derender"
    required_tasks = ("render",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        state.trl_streams = {}
