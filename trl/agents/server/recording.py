"""One recorded turn: render only what is new, generate from token ids, parse with vLLM, append to the session.

Every step is vLLM's own endpoint: rendering and parsing on the render server (`vllm launch render`, or the session's
replica when there is none), generation on the session's replica (started with `--enable-scale-out`):

1. `/v1/chat/completions/render` turns the request into token ids and sampling parameters (vLLM's validation,
   chat template, tool schemas, structured outputs). On the first turn the whole conversation is rendered.
   On later turns only the *new* messages are rendered, behind a fixed two-message stand-in history (`ANCHOR`);
   the stand-in's tokens are cut off, and what is left (the template's text after an assistant turn, the new
   messages, the generation prompt) is appended to the tokens the engine already saw and sampled. The peers'
   name for this is a turn bridge (PrimeIntellect renderers' `bridge_to_next_turn`, verl's `ToolAgentLoop`); it is
   why re-rendering quirks (reasoning dropped from earlier turns, tool-call JSON re-serialised) never reach the
   recorded tokens.
2. `/inference/v1/generate` samples from those exact ids and returns the sampled ids and their logprobs.
3. `/v1/chat/completions/derender` (or `/v1/completions/derender`) turns the sampled ids into the OpenAI answer:
   content, `tool_calls` from the server's tool parser, reasoning, usage.

Only when all three succeed is the turn recorded, so a failed request never leaves half a turn behind.

Streamed turns (`chat_turn_stream`) generate with `stream: true` and derender the engine's chunks as they come, on the
render server's stateful streaming route (`stream_derender.py`, a vLLM endpoint plugin) or, where it is missing, vLLM's
stateless one; the turn is recorded once its last chunk has been derendered.

Not here: routing, HTTP routes, server-sent events (see `gateway.py`, `protocol.py`, `messages_api.py`,
`responses_api.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..trajectory import TurnRecord
from ..turns import ANCHOR, ANCHOR_CONTENT, Anchor, TemplateError
from .http1 import Http1Client
from .routing import ReplicaHandle
from .sessions import Session, canonical_message, new_messages
from .stream_derender import ROUTE as STATEFUL_DERENDER
from .upstream import GatewayError, UpstreamError, encode_sorted, post_json, stream_json
from .weight_sync import Policy


# Sampling fields a client may set that keep their name in vLLM's SamplingParams. vLLM's render output omits fields
# equal to SamplingParams' defaults (max_tokens=16, temperature=1.0, ...), and /inference/v1/generate then treats
# them as unset and applies the model's generation-config defaults instead; so the client's values are re-asserted.
SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "seed", "min_tokens", "ignore_eos", "skip_special_tokens", "include_stop_str_in_output",
    "spaces_between_special_tokens",
)  # fmt: skip
# Request fields that change how the template renders (everything else is sampling or response shape).
TEMPLATE_FIELDS = ("tools", "chat_template", "chat_template_kwargs", "documents", "add_special_tokens")


class TurnError(GatewayError):
    """A turn the gateway refuses itself."""


@dataclass
class Timeouts:
    """Deadlines in seconds for the calls of one turn."""

    render: float = 60.0
    generate: float = 600.0


@dataclass
class _ChatPlan:
    """What a chat turn is generated from: the request's messages, the new ones (`delta`) and their `bridge` tokens
    when appended to the current segment (else `fork_reason` and a new segment), the render, the context ids."""

    messages: list[dict[str, Any]]
    delta: list[dict[str, Any]] | None
    bridge: list[int] | None
    fork_reason: str | None
    rendered: dict[str, Any]
    context: list[int]


class Recorder:
    """Runs recorded chat and completion turns against replicas and appends them to sessions."""

    def __init__(
        self,
        client: Http1Client,
        max_model_len: int,
        timeouts: Timeouts | None = None,
        renderer_of: dict[str, ReplicaHandle] | None = None,
        stream_interval: int = 1,
    ):
        self.client = client
        self.max_model_len = max_model_len
        self.timeouts = timeouts or Timeouts()
        self._renderer_of = renderer_of or {}
        self.stream_interval = stream_interval
        self._anchors: dict[str, asyncio.Task] = {}
        self._no_stateful_derender: set[str] = set()  # render servers that lack `stream_derender`'s route
        self.forks_by_reason: dict[str, int] = {}

    def renderer(self, replica: ReplicaHandle) -> ReplicaHandle:
        """The server that renders and parses for sessions on `replica` (the replica itself without render servers)."""
        return self._renderer_of.get(replica.name, replica)

    # -- chat --------------------------------------------------------------------------------------------------

    async def chat_turn(self, session: Session, replica: ReplicaHandle, body: dict[str, Any], policy: Policy) -> dict:
        """Run one chat turn of `session` on `replica` and record it; return the OpenAI chat completion."""
        plan = await self._plan_chat(session, replica, body)
        started = time.monotonic()
        sampled, logprobs, generated = await self._generate(
            replica, session, plan.context, plan.rendered, body, policy
        )
        seconds = time.monotonic() - started
        if not body.get("logprobs"):
            generated["choices"][0]["logprobs"] = None  # not asked for: skip converting them back to text
        stop_ids = await self._stop_ids(replica, body, plan.rendered)
        derender_body = {
            "generate_response": _without_stop_token(generated, stop_ids),
            "prompt_tokens": len(plan.context),
            "chat_request": _parser_request(body, stream=False),
        }
        answer = await post_json(
            self.client, self.renderer(replica), "/v1/chat/completions/derender", derender_body, self.timeouts.render
        )
        self._shape_answer(answer, body, plan.context, sampled, stop_ids, plan.rendered["sampling_params"])
        choice = answer["choices"][0]
        self._record_chat(session, plan, sampled, logprobs, choice["message"], choice.get("finish_reason"), policy,
                          seconds)  # fmt: skip
        return answer

    async def chat_turn_stream(
        self, session: Session, replica: ReplicaHandle, body: dict[str, Any], policy: Policy
    ) -> AsyncIterator[dict[str, Any]]:
        """Run one chat turn of `session` and yield its `chat.completion.chunk`s as the engine samples them.

        The engine's chunks are derendered by the render server (`_StreamDerender`), the chunks that queued up during
        a call together in the next one. The turn is recorded once its last engine chunk has been derendered, before
        the last chunk is yielded; a stream closed earlier (the client left) aborts the request in the engine (if
        still running) and records nothing. The session lock and the weight gate are held until then
        (`Gateway._recording`).
        """
        plan = await self._plan_chat(session, replica, body)
        stop_ids = await self._stop_ids(replica, body, plan.rendered)
        request = self._generate_request(session, plan.context, plan.rendered, body, policy)
        sampling = request["sampling_params"]  # the client's own `stream_interval` (vLLM's field) when larger
        sampling["stream_interval"] = max(sampling.get("stream_interval") or 1, self.stream_interval)
        derender = _StreamDerender(self, self.renderer(replica), plan.context, body, stop_ids)
        sampled: list[int] = []
        logprobs: list[float] = []
        reply = _Reply(plan.rendered["sampling_params"])
        finish = chunk = None
        started = time.monotonic()
        async for engine_chunks in _batched(stream_json(self.client, replica, "/inference/v1/generate",
                                                   {**request, "stream": True}, self.timeouts.generate)):  # fmt: skip
            for engine_chunk in engine_chunks:
                choice = engine_chunk["choices"][0]
                ids = choice.get("token_ids") or []
                if len((choice.get("logprobs") or {}).get("content") or []) != len(ids):
                    raise TurnError(502, f"{replica.name} streamed {len(ids)} tokens without a logprob for each")
            for engine_chunk, chunk in await derender.chunks(engine_chunks):
                choice = engine_chunk["choices"][0]
                ids = choice.get("token_ids") or []
                first = not sampled
                sampled += ids
                logprobs += [entry["logprob"] for entry in (choice.get("logprobs") or {}).get("content") or []]
                finish = choice.get("finish_reason")
                for out in chunk.get("choices") or []:
                    reply.add(out)
                    if body.get("return_token_ids"):
                        out["token_ids"] = ids
                if body.get("return_token_ids") and first:
                    chunk["prompt_token_ids"] = plan.context
                if (body.get("stream_options") or {}).get("continuous_usage_stats"):
                    chunk["usage"] = _usage(plan.context, sampled)
                if finish is not None:
                    self._record_chat(session, plan, sampled, logprobs, reply.message(), reply.finish_reason or finish,
                                      policy, time.monotonic() - started)  # fmt: skip
                yield chunk
        if finish is None or chunk is None:
            raise TurnError(502, f"{replica.name} ended the token stream before the turn finished")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {"id": chunk.get("id"), "object": "chat.completion.chunk", "created": chunk.get("created"),
                   "model": chunk.get("model"), "choices": [], "usage": _usage(plan.context, sampled)}  # fmt: skip

    async def _plan_chat(self, session: Session, replica: ReplicaHandle, body: dict[str, Any]) -> _ChatPlan:
        """The context of a chat turn: the recorded tokens and the new messages bridged onto them, or (first turn,
        history rewritten, template not prefix-stable) the whole conversation rendered, in a new segment."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TurnError(400, "`messages` must be a list of message objects")
        segment = session.current
        delta = new_messages(segment.messages, messages) if segment is not None else None
        bridge: list[int] | None = None
        fork_reason = None if segment is None else "history_edited"
        if delta is not None:
            rendered = await self._render_chat(replica, {**body, "messages": ANCHOR + delta})
            bridge = await self._bridge(replica, body, rendered["token_ids"], segment.tokens.token_ids)
            fork_reason = "template_not_prefix_stable" if bridge is None else None
        if bridge is None:
            rendered = await self._render_chat(replica, body)
            context = rendered["token_ids"]
        else:
            context = segment.tokens.token_ids + bridge
        return _ChatPlan(messages, delta, bridge, fork_reason, rendered, context)

    def _record_chat(
        self,
        session: Session,
        plan: _ChatPlan,
        sampled: list[int],
        logprobs: list[float],
        message: dict[str, Any],
        finish_reason: str | None,
        policy: Policy,
        seconds: float,
    ) -> None:
        """Append the turn to the session: onto its current segment when bridged, else as a new segment."""
        if plan.bridge is None:
            segment = self._start_segment(session, plan.fork_reason)
            segment.tokens.add_context(plan.context)
            segment.messages = [canonical_message(m) for m in plan.messages]
        else:
            segment = session.current
            segment.tokens.add_context(plan.bridge)
            segment.messages += [canonical_message(m) for m in plan.delta]
        segment.tokens.add_sampled(sampled, logprobs)
        segment.messages.append(canonical_message(message))
        tools = [call["function"]["name"] for call in message.get("tool_calls") or []]
        segment.turns.append(
            TurnRecord(policy.version, finish_reason, len(plan.context), len(sampled), tools, round(seconds, 4))
        )

    async def _render_chat(self, replica: ReplicaHandle, body: dict[str, Any]) -> dict[str, Any]:
        request = {**body, "stream": False, "stream_options": None}
        renderer = self.renderer(replica)
        return await post_json(self.client, renderer, "/v1/chat/completions/render", request, self.timeouts.render)

    async def _bridge(
        self, replica: ReplicaHandle, body: dict[str, Any], rendered: list[int], history: list[int]
    ) -> list[int] | None:
        """Tokens to append to `history` for the new messages rendered behind the anchor; `None` if impossible."""
        return (await self._anchor(replica, body)).bridge(rendered, history)

    async def _anchor(self, replica: ReplicaHandle, body: dict[str, Any]) -> Anchor:
        """The anchor for this request's template settings, computed once (concurrent callers share the work)."""
        template = {k: body[k] for k in TEMPLATE_FIELDS if k in body}
        key = encode_sorted([body.get("model"), template])  # tools can be kilobytes: msgspec, not json
        task = self._anchors.get(key)
        if task is None or (task.done() and task.exception() is not None):
            task = self._anchors[key] = asyncio.ensure_future(self._compute_anchor(replica, body, template))
        return await asyncio.shield(task)

    async def _compute_anchor(self, replica: ReplicaHandle, body: dict[str, Any], template: dict) -> Anchor:
        request = {"model": body.get("model"), **template, "messages": ANCHOR, "add_generation_prompt": False}
        rendered = (await self._render_chat(replica, request))["token_ids"]
        marker = await post_json(
            self.client,
            self.renderer(replica),
            "/tokenize",
            {"model": body.get("model"), "prompt": ANCHOR_CONTENT, "add_special_tokens": False},
            self.timeouts.render,
        )
        try:
            return Anchor.find(rendered, marker["tokens"])
        except TemplateError as exc:
            raise TurnError(500, str(exc)) from exc

    async def _stop_ids(self, replica: ReplicaHandle, body: dict[str, Any], rendered: dict[str, Any]) -> set[int]:
        """Token ids that end a turn: the template's end-of-turn token and the request's `stop_token_ids`."""
        anchor = await self._anchor(replica, body)
        return {anchor.end_of_turn, *(rendered["sampling_params"].get("stop_token_ids") or [])}

    # -- completions -------------------------------------------------------------------------------------------

    async def completion_turn(
        self, session: Session, replica: ReplicaHandle, body: dict[str, Any], policy: Policy
    ) -> dict:
        """Run one text-completion turn of `session` and record it; return the OpenAI completion."""
        request = {**body, "stream": False, "stream_options": None}
        renderer = self.renderer(replica)
        rendered_list = await post_json(self.client, renderer, "/v1/completions/render", request, self.timeouts.render)
        if not isinstance(rendered_list, list) or len(rendered_list) != 1:
            raise TurnError(400, "session routes take exactly one prompt per completion request")
        rendered = rendered_list[0]
        context = rendered["token_ids"]
        segment = session.current
        history = segment.tokens.token_ids if segment is not None else []
        extends = segment is not None and len(context) > len(history) and context[: len(history)] == history
        started = time.monotonic()
        sampled, logprobs, generated = await self._generate(replica, session, context, rendered, body, policy)
        seconds = time.monotonic() - started
        if body.get("logprobs") is None:
            generated["choices"][0]["logprobs"] = None
        derender_body = {
            "generate_responses": [generated],
            "prompt_tokens": [len(context)],
            "completion_request": request,
        }
        answer = await post_json(
            self.client, self.renderer(replica), "/v1/completions/derender", derender_body, self.timeouts.render
        )
        if not extends:
            segment = self._start_segment(session, None if segment is None else "history_edited")
            segment.tokens.add_context(context)
        else:
            segment.tokens.add_context(context[len(history) :])
        segment.tokens.add_sampled(sampled, logprobs)
        choice = answer["choices"][0]
        if choice.get("finish_reason") == "stop" and isinstance(choice.get("text"), str):
            choice["text"] = cut_at_stop_string(choice["text"], rendered["sampling_params"])
        segment.turns.append(
            TurnRecord(policy.version, choice.get("finish_reason"), len(context), len(sampled), [], round(seconds, 4))
        )
        if body.get("return_token_ids"):
            choice["prompt_token_ids"], choice["token_ids"] = context, sampled
        return answer

    # -- shared ------------------------------------------------------------------------------------------------

    async def _generate(
        self,
        replica: ReplicaHandle,
        session: Session,
        context: list[int],
        rendered: dict[str, Any],
        body: dict[str, Any],
        policy: Policy,
    ) -> tuple[list[int], list[float], dict[str, Any]]:
        request = self._generate_request(session, context, rendered, body, policy)
        generated = await post_json(self.client, replica, "/inference/v1/generate", request, self.timeouts.generate)
        choice = generated["choices"][0]
        sampled = choice.get("token_ids") or []
        entries = (choice.get("logprobs") or {}).get("content") or []
        logprobs = [entry["logprob"] for entry in entries]
        if len(logprobs) != len(sampled):
            raise TurnError(502, f"{replica.name} returned {len(sampled)} tokens but {len(logprobs)} logprobs")
        return sampled, logprobs, generated

    def _generate_request(
        self, session: Session, context: list[int], rendered: dict[str, Any], body: dict[str, Any], policy: Policy
    ) -> dict[str, Any]:
        """The `/inference/v1/generate` request of a turn: the exact context ids and the client's sampling."""
        if len(context) >= self.max_model_len:
            raise TurnError(
                400,
                f"This session's context is {len(context)} tokens, which leaves no room to generate within the "
                f"model's maximum context length of {self.max_model_len} tokens.",
            )
        sampling = dict(rendered["sampling_params"])
        sampling.update({k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None})
        requested = body.get("max_completion_tokens") or body.get("max_tokens")
        # vLLM's default when unset is "the rest of the context", computed here for the real (recorded) context
        sampling["max_tokens"] = requested if requested is not None else self.max_model_len - len(context)
        sampling["logprobs"] = max(sampling.get("logprobs") or 0, 0)  # always record the sampled token's logprob
        if not sampling.get("stop"):
            sampling["detokenize"] = False  # derender makes the text; the replica needs it only to match stop strings
        request = {
            "request_id": f"{session.session_id}-{uuid.uuid4().hex[:12]}",
            "token_ids": context,
            "sampling_params": sampling,
            "cache_salt": f"policy-{policy.version}",  # no prefix-cache reuse across policy versions
        }
        if policy.lora_name:
            request["model"] = policy.lora_name  # adapter-only weight sync: the replicas serve the policy as a LoRA
        return request

    @staticmethod
    def _shape_answer(
        answer: dict, body: dict, context: list[int], sampled: list[int], stop_ids: set[int], sampling: dict
    ) -> None:
        """Make the derendered chat answer what vLLM's own chat route would have answered for the same tokens."""
        choice = answer["choices"][0]
        message = choice["message"]
        if choice.get("finish_reason") == "stop":
            if len(sampled) == 1 and sampled[0] in stop_ids:
                message["content"] = ""  # derender refuses no ids, so it was given the stop token: an empty reply
            elif isinstance(message.get("content"), str):
                message["content"] = cut_at_stop_string(message["content"], sampling)
        if message.get("tool_calls") and choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "tool_calls"  # as vLLM's own chat route reports it; derender leaves "stop"
        if body.get("return_token_ids"):
            answer["prompt_token_ids"], choice["token_ids"] = context, sampled
        else:
            choice.pop("token_ids", None)

    def _start_segment(self, session: Session, fork_reason: str | None):
        if fork_reason is not None:
            self.forks_by_reason[fork_reason] = self.forks_by_reason.get(fork_reason, 0) + 1
        return session.start_segment()


def _without_stop_token(generated: dict[str, Any], stop_ids: set[int]) -> dict[str, Any]:
    """The generate response without its final stop token, for derendering.

    vLLM's chat route never puts the token that ended a turn (`<|im_end|>`) into `content`; derender decodes every
    id with special tokens kept when a parser is configured, so the stop token is dropped here. It stays in the
    recorded tokens: the engine sampled it and the trainer learns to stop. A reply of the stop token alone keeps it
    (derender refuses an empty list); the caller empties that reply's content.
    """
    choice = generated["choices"][0]
    ids = choice.get("token_ids") or []
    if choice.get("finish_reason") != "stop" or len(ids) < 2 or ids[-1] not in stop_ids:
        return generated  # stopped by length or by a stop string (vLLM already cut it from the text)
    trimmed = {**choice, "token_ids": ids[:-1]}
    if choice.get("logprobs") and choice["logprobs"].get("content"):
        trimmed["logprobs"] = {**choice["logprobs"], "content": choice["logprobs"]["content"][:-1]}
    return {**generated, "choices": [trimmed]}


def cut_at_stop_string(text: str, sampling: dict[str, Any]) -> str:
    """`text` up to the first of the request's stop strings, as vLLM's own routes answer.

    The engine stops on a stop string in the text it detokenizes, but the sampled token that completed the string
    may carry more text, and derender decodes the whole token: so the cut is made here. The recorded tokens keep
    the whole token (the engine sampled it). `include_stop_str_in_output` keeps the stop string itself.
    """
    stops = sampling.get("stop") or []
    if isinstance(stops, str):
        stops = [stops]
    found = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    if not found:
        return text
    start, stop = min(found)
    return text[: start + (len(stop) if sampling.get("include_stop_str_in_output") else 0)]


class _Reply:
    """The assistant message a chat stream adds up to, delta by delta (what the recording's history keeps)."""

    def __init__(self, sampling: dict[str, Any]):
        self.sampling = sampling
        self.content = ""
        self.reasoning = ""
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        """Add one streamed choice; on the last one, cut its content at a stop string as vLLM's routes do."""
        delta = choice.get("delta") or {}
        if delta.get("content"):
            text = self.content + delta["content"]
            if choice.get("finish_reason") == "stop":
                text = cut_at_stop_string(text, self.sampling)
                delta["content"] = text[len(self.content) :]
            self.content = text
        self.reasoning += delta.get("reasoning") or delta.get("reasoning_content") or ""
        for call in delta.get("tool_calls") or []:
            entry = self.calls.setdefault(
                call.get("index", len(self.calls)),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            entry["id"] = call.get("id") or entry["id"]
            function = call.get("function") or {}
            entry["function"]["name"] += function.get("name") or ""
            entry["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning"] = self.reasoning
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return message


class _StreamDerender:
    """The render server's part of one streamed chat turn: engine chunks in, one `chat.completion.chunk` out for each.

    Through `stream_derender.py`'s route (one parser per stream, each chunk parsed once) when the render server has
    it; on one that answers 404 (started without the plugin: a replica's own server, an older deployment) through
    vLLM's stateless route, which replays the reply so far on every call, one call per chunk because its parsers must
    see the engine's steps one at a time (hermes loses the start of a call's arguments when one delta ends the name
    and starts the arguments)."""

    def __init__(self, recorder: Recorder, renderer: ReplicaHandle, context: list[int], body: dict[str, Any],
                 stop_ids: set[int]):  # fmt: skip
        self.recorder, self.renderer, self.body, self.stop_ids = recorder, renderer, body, stop_ids
        self.prompt_tokens = len(context)
        # the parser needs the prompt only to tell whether it leaves reasoning open: the text of this turn's header
        self.header = context[_rindex(context, stop_ids) + 1 :]
        self.parser_request = _parser_request(body, stream=True)
        self.stateful = renderer.name not in recorder._no_stateful_derender
        self.stream_id = uuid.uuid4().hex
        self.position = 0  # output tokens sent to the stateful route
        self.calls = 0
        self.state: dict[str, Any] | None = None  # vLLM's route's stream state

    def _shown(self, engine_chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk as derendered: the stop token is recorded (the engine sampled it) but not shown, as on the
        non-streamed route; logprobs only when asked for."""
        choice = engine_chunk["choices"][0]
        ids = choice.get("token_ids") or []
        shown = ids[:-1] if choice.get("finish_reason") == "stop" and ids and ids[-1] in self.stop_ids else ids
        entries = (choice.get("logprobs") or {}).get("content") or []
        logprobs = {"content": entries[: len(shown)]} if self.body.get("logprobs") else None
        return {**engine_chunk, "choices": [{**choice, "token_ids": shown, "logprobs": logprobs}]}

    async def chunks(self, engine_chunks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """`(engine chunk, chat.completion.chunk)` pairs: the engine chunks as given, or (vLLM's route) cut into
        one-token steps first, since its parsers must see one token per step."""
        first, self.calls = self.calls == 0, self.calls + 1
        recorder, timeout = self.recorder, self.recorder.timeouts.render
        if self.stateful:
            shown = [self._shown(chunk) for chunk in engine_chunks]
            request = {"stream_id": self.stream_id, "position": self.position, "generate_chunks": shown,
                       "model": self.body.get("model")}  # fmt: skip
            if first:
                request |= {"chat_request": self.parser_request, "prompt_token_ids": self.header}
            try:
                answer = await post_json(recorder.client, self.renderer, STATEFUL_DERENDER, request, timeout)
                self.position += sum(len(chunk["choices"][0]["token_ids"]) for chunk in shown)
                return list(zip(engine_chunks, answer["chunks"], strict=True))
            except UpstreamError as exc:
                if exc.status != 404 or not first:
                    raise
                recorder._no_stateful_derender.add(self.renderer.name)
                self.stateful = False
        out = []
        for step in [step for chunk in engine_chunks for step in _one_token_steps(chunk)]:
            request = {"stream": True, "generate_chunk": self._shown(step), "stream_state": self.state,
                       "prompt_tokens": self.prompt_tokens, "prompt_token_ids": self.header,
                       "chat_request": self.parser_request}  # fmt: skip
            answer = await post_json(recorder.client, self.renderer, "/v1/chat/completions/derender", request, timeout)
            self.state = answer["stream_state"]
            out.append((step, answer["chunk"]))
        return out


def _one_token_steps(engine_chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """An engine chunk of several tokens (`stream_interval`) as one chunk per token; the last keeps the finish."""
    choice = engine_chunk["choices"][0]
    ids = choice.get("token_ids") or []
    if len(ids) <= 1:
        return [engine_chunk]
    entries = (choice.get("logprobs") or {}).get("content") or []
    steps = []
    for k, token_id in enumerate(ids):
        last = k == len(ids) - 1
        step = {**choice, "token_ids": [token_id], "logprobs": {"content": entries[k : k + 1]}}
        if not last:
            step |= {"finish_reason": None, "stop_reason": None}
        steps.append({**engine_chunk, "choices": [step]})
    return steps


async def _batched(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    """The engine's stream chunks (those with a choice), read ahead into a queue so the engine never waits for the
    derender calls, and handed on in lists: all those that queued up since the last list."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def read() -> None:
        try:
            async for chunk in chunks:
                if chunk.get("choices"):
                    queue.put_nowait(chunk)
            queue.put_nowait(end)
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait(exc)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and isinstance(batch[-1], dict):
                batch.append(queue.get_nowait())
            last = batch[-1]
            if not isinstance(last, dict):
                batch.pop()
            if batch:
                yield batch
            if isinstance(last, Exception):
                raise last
            if last is end:
                return
    finally:
        reader.cancel()  # the client left: closing the engine's stream aborts the request there
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _usage(context: list[int], sampled: list[int]) -> dict[str, int]:
    return {
        "prompt_tokens": len(context),
        "completion_tokens": len(sampled),
        "total_tokens": len(context) + len(sampled),
    }


def _parser_request(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The chat request derender parses a reply for: the client's, with its conversation cut to the last message and
    the earlier assistant tool calls (Kimi K2's parser numbers tool-call ids after them). vLLM's parsers read the
    tools, tool choice and template settings, not the text of the conversation, and the render server validates
    whatever it is sent: on every streamed chunk, so the whole history would cost it time in proportion to the
    context."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    calls = [{"role": "assistant", "content": None, "tool_calls": m["tool_calls"]}
             for m in messages[:-1] if m.get("role") == "assistant" and m.get("tool_calls")]  # fmt: skip
    return {**body, "messages": calls + messages[-1:], "stream": stream, "stream_options": None}


def _rindex(ids: list[int], targets: set[int]) -> int:
    """The last position of any of `targets` in `ids` (-1: none)."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] in targets:
            return i
    return -1
