"""Anthropic Messages API on session URLs, recorded as chat turns: the request as a chat completion request, the chat
answer as a Messages answer, and its server-sent events.

A `/sessions/{sid}/v1/messages` turn is a chat turn with another wire format: the request is converted here, then
recorded by the chat pipeline (`recording.py`: delta rendering, vLLM's chat template, tool and reasoning parsers,
forks), and vLLM's chat answer is converted back. The conversion follows what vLLM's own `/v1/messages` does, so the
prompt the engine sees is the one vLLM would render (`tests/test_apis.py` checks it against `/v1/messages/render`):
`system` becomes a system message (without Claude Code's per-request billing-header block), and so does a message of role
`system` between turns, where it stands; `tool_result` blocks become tool messages, placed before the rest of their user
message; `tool_use` blocks become tool calls and `thinking` blocks reasoning of the assistant message; tools take
their `input_schema` as parameters; `thinking: {type: disabled}` sets the template variable `enable_thinking` to false
(what Qwen3-style templates read; vLLM's own route sets a reasoning effort instead). Fields outside the Messages API (vLLM's extensions such as
`structured_outputs`, `chat_template_kwargs`) are passed to the chat request as they are.

Streaming: `Stream` turns the chat turn's chunks into the Messages API's events as the engine samples them.
Not here: the turn (`recording.py`), the Responses API (`responses_api.py`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from .protocol import HeldWhitespace
from .upstream import GatewayError


# Messages fields converted here (everything else is passed on to the chat request as it is).
MESSAGES_FIELDS = {
    "model", "messages", "system", "max_tokens", "stop_sequences", "tools", "tool_choice", "thinking", "metadata",
    "stream", "service_tier", "container", "mcp_servers",
}  # fmt: skip
# Claude Code puts a per-request hash in a system block starting with this; vLLM drops the block, and so does the
# gateway (kept, it would make every turn's history differ from the last one's).
BILLING_HEADER = "x-anthropic-billing-header"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion request for a Messages request `body` (400 naming what cannot be converted)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise GatewayError(400, "`messages` must be a list of message objects")
    if body.get("max_tokens") is None:
        raise GatewayError(400, "`max_tokens` is required (the Messages API has no default)")
    for name in ("mcp_servers", "container"):
        if body.get(name):
            raise GatewayError(400, f"`{name}` is not supported on recorded session routes")
    chat: dict[str, Any] = {k: v for k, v in body.items() if k not in MESSAGES_FIELDS}
    chat["model"] = body.get("model")
    chat["messages"] = [*_system(body.get("system")), *(m for msg in messages for m in _message(msg))]
    chat["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("tools"):
        if not isinstance(body["tools"], list):
            raise GatewayError(400, "`tools` must be a list")
        chat["tools"] = [_tool(t) for t in body["tools"]]
    if body.get("tool_choice") is not None:
        chat.update(_tool_choice(body["tool_choice"]))
    thinking = body.get("thinking") or {}
    if not isinstance(thinking, dict):
        raise GatewayError(400, "`thinking` must be an object")
    if thinking.get("type") == "enabled" and thinking.get("budget_tokens"):
        chat["thinking_token_budget"] = thinking["budget_tokens"]
    elif thinking.get("type") == "disabled":  # what Qwen3-style templates read (others ignore unknown variables)
        chat["chat_template_kwargs"] = {**(chat.get("chat_template_kwargs") or {}), "enable_thinking": False}
    return chat


def _system(system: Any, where: str = "`system`") -> list[dict[str, Any]]:
    """The system message of a string or a list of text blocks (`cache_control` and the billing header dropped)."""
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        texts = [b.get("text") or "" for b in system if isinstance(b, dict) and b.get("type") == "text"]
        text = "".join(t for t in texts if isinstance(t, str) and not t.startswith(BILLING_HEADER))
        return [{"role": "system", "content": text}] if text else []
    raise GatewayError(400, f"{where} must be a string or a list of text blocks")


def _message(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of one Messages message: tool results first (as tool messages), then the message itself.
    A `system` message (Claude Code sends its reminders so, between turns) stays a system message where it stands,
    which is what vLLM's own route renders for templates that take a system message after the first."""
    role, content = message.get("role"), message.get("content")
    if role == "system":
        return _system(content, "a system message's `content`")
    if role not in ("user", "assistant"):
        raise GatewayError(400, f"message role must be 'user', 'assistant' or 'system', not {role!r}")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise GatewayError(400, "message `content` must be a string or a list of content blocks")
    before: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if block.get("text"):
                parts.append({"type": "text", "text": block["text"]})
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
        elif kind == "redacted_thinking":
            continue  # opaque: nothing the template could render
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {})
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name") or "", "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result" and role == "user":
            before.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "",
                           "content": _tool_result_text(block.get("content"))})  # fmt: skip
        else:
            raise GatewayError(400, f"content block type {kind!r} is not supported in a {role} message here")
    chat: dict[str, Any] = {"role": role}
    if parts:
        chat["content"] = parts[0]["text"] if len(parts) == 1 else parts
    if calls:
        chat["tool_calls"] = calls
    if reasoning:
        chat["reasoning"] = "".join(reasoning)
    keep = role == "assistant" or "content" in chat
    return [*before, chat] if keep else before


def _tool_result_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if len(texts) != len(content):
            raise GatewayError(400, "tool_result content takes text blocks only on recorded session routes")
        return "\n".join(texts)
    raise GatewayError(400, "tool_result `content` must be a string or a list of text blocks")


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or not tool.get("name"):
        raise GatewayError(400, "each tool needs a `name` (and an `input_schema`)")
    if tool.get("type") not in (None, "custom"):
        raise GatewayError(400, f"tool type {tool['type']!r} is not supported: only client tools with an input_schema")
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    chat: dict[str, Any] = {}
    if kind in ("auto", "any", "none"):
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    elif kind == "tool" and choice.get("name"):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise GatewayError(400, "`tool_choice` must be {type: auto | any | none} or {type: tool, name}")
    if choice.get("disable_parallel_tool_use") is not None:
        chat["parallel_tool_calls"] = not choice["disable_parallel_tool_use"]
    return chat


def from_chat(answer: dict[str, Any]) -> dict[str, Any]:
    """The Messages answer for vLLM's chat `answer` of the converted request."""
    choice = answer["choices"][0]
    message = choice["message"]
    content: list[dict[str, Any]] = []
    if message.get("reasoning"):
        content.append({"type": "thinking", "thinking": message["reasoning"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _arguments(call["function"]["arguments"])})  # fmt: skip
    if not content:
        content.append({"type": "text", "text": ""})  # the API's shape of an empty reply
    stop_reason, stop_sequence = _stop(choice)
    messages_answer = {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": answer.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(answer.get("usage") or {}),
    }
    for key in ("prompt_token_ids",):  # `return_token_ids` (a vLLM extension) carries over
        if key in answer:
            messages_answer[key] = answer[key]
    if "token_ids" in choice:
        messages_answer["token_ids"] = choice["token_ids"]
    return messages_answer


def _stop(choice: dict[str, Any]) -> tuple[str, str | None]:
    """The Messages `stop_reason` and `stop_sequence` of a chat choice."""
    stop_reason = STOP_REASONS.get(choice.get("finish_reason"), "end_turn")
    stop_sequence = choice.get("stop_reason") if isinstance(choice.get("stop_reason"), str) else None
    return ("stop_sequence" if stop_sequence is not None and stop_reason == "end_turn" else stop_reason), stop_sequence


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)}


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise GatewayError(502, f"the tool parser returned arguments that are not JSON: {arguments[:200]!r}") from exc


class Stream:
    """The Messages API's server-sent events for a chat turn's chunks, fed as the engine samples them: a
    `message_start`, each content block (thinking, text, tool_use) opened, filled by deltas and closed, then
    `message_delta` (stop reason, usage) and `message_stop` when the chat turn finishes."""

    def __init__(self):
        self.id = f"msg_{uuid.uuid4().hex}"
        self.blocks: list[str] = []  # the type of each block opened
        self.open = False
        self.calls: set[int] = set()  # tool-call indexes given a block
        self.usage: dict[str, Any] = {}
        self.started = False
        self.text = HeldWhitespace()

    def feed(self, chunk: dict[str, Any]) -> list[str]:
        events = []
        if not self.started:
            self.started = True
            start = {"id": self.id, "type": "message", "role": "assistant", "model": chunk.get("model"), "content": [],
                     "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
            events.append(_event("message_start", {"message": start}))
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                events += self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning})
            text = self.text.shown(delta.get("content"), self.open and self.blocks[-1] == "text")
            if text:
                events += self._delta("text", {"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if call.get("index", 0) not in self.calls:
                    self.calls.add(call.get("index", 0))
                    block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name") or "", "input": {}}
                    events += self._start(block)
                if function.get("arguments"):
                    delta_json = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    events.append(_event("content_block_delta", {"index": len(self.blocks) - 1, "delta": delta_json}))
            if choice.get("finish_reason") is not None:
                events += self._finish(choice)
        return events

    def _delta(self, kind: str, delta: dict[str, Any]) -> list[str]:
        events = []
        if not self.open or self.blocks[-1] != kind:
            empty = (
                {"type": "thinking", "thinking": "", "signature": ""}
                if kind == "thinking"
                else {"type": kind, "text": ""}
            )
            events += self._start(empty)
        events.append(_event("content_block_delta", {"index": len(self.blocks) - 1, "delta": delta}))
        return events

    def _start(self, block: dict[str, Any]) -> list[str]:
        events = self._close()
        self.blocks.append(block["type"])
        self.open = True
        return [*events, _event("content_block_start", {"index": len(self.blocks) - 1, "content_block": block})]

    def _close(self) -> list[str]:
        if not self.open:
            return []
        self.open = False
        return [_event("content_block_stop", {"index": len(self.blocks) - 1})]

    def error(self, status: int, message: str) -> list[str]:
        """The event a stream ends with when the turn fails after its first event (the API's `error` event)."""
        kind = "invalid_request_error" if status < 500 else "overloaded_error" if status == 503 else "api_error"
        return [_event("error", {"error": {"type": kind, "message": message}})]

    def _finish(self, choice: dict[str, Any]) -> list[str]:
        events = [] if self.blocks else self._start({"type": "text", "text": ""})  # the API's empty reply
        events += self._close()
        usage = _usage(self.usage)
        delta = dict(zip(("stop_reason", "stop_sequence"), _stop(choice), strict=True))
        return [*events, _event("message_delta", {"delta": delta, "usage": usage}), _event("message_stop", {})]


def _event(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, ensure_ascii=False)}\n\n"
