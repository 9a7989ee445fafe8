"""OpenAI Responses API on session URLs, recorded as chat turns: the request as a chat completion request (with the
conversation a `previous_response_id` names), the chat answer as a Response, and its server-sent events.

A `/sessions/{sid}/v1/responses` turn is a chat turn with another wire format: converted here, recorded by the chat
pipeline (`recording.py`), converted back. The conversion follows vLLM's own `/v1/responses` (checked against
`/v1/responses/render` in `tests/test_apis.py`): `instructions` is a system message and does not carry over to
later responses; a string `input` is a user message; `function_call` items join the assistant message before them as
tool calls, `reasoning` items as its reasoning, `function_call_output` items become tool messages; function tools
take the chat tool shape. Fields outside the Responses API (vLLM's extensions) are passed on as they are.

State: a response stored (`store`, true by default) keeps its whole conversation in its session, so a later request
of the same session may send only the new items with `previous_response_id`. Responses live as long as their session
and are not journaled: after a gateway restart (or from another session) the id is unknown and the request gets a
400 that says to send the whole conversation as `input` instead.

Streaming: `Stream` turns the chat turn's chunks into the Responses API's events as the engine samples them.
Not here: the turn (`recording.py`), the Messages API (`messages_api.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .protocol import HeldWhitespace
from .upstream import GatewayError


# Responses fields converted or deliberately ignored here (everything else is passed on to the chat request).
RESPONSES_FIELDS = {
    "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "previous_response_id", "store",
    "stream", "stream_options", "text", "reasoning", "metadata", "user", "truncation", "include", "service_tier",
    "safety_identifier", "prompt_cache_key", "background", "conversation", "prompt", "max_tool_calls",
}  # fmt: skip
UNSUPPORTED = ("background", "conversation", "prompt")


def to_chat(body: dict[str, Any], stored: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The chat completion request for a Responses request `body`; `stored`: the session's stored conversations."""
    for name in UNSUPPORTED:
        if body.get(name):
            raise GatewayError(400, f"`{name}` is not supported on recorded session routes")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str) or previous not in stored:
            raise GatewayError(
                400,
                f"previous_response_id {str(previous)[:100]!r} is not a stored response of this session (responses "
                "are kept per session while the gateway runs, and only with store=true): send the whole "
                "conversation as `input` instead",
            )
        messages += [m for m in stored[previous] if m.get("role") != "system"]
    messages += _input_messages(body.get("input"))
    chat: dict[str, Any] = {k: v for k, v in body.items() if k not in RESPONSES_FIELDS}
    chat["model"] = body.get("model")
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        if not isinstance(body["tools"], list):
            raise GatewayError(400, "`tools` must be a list")
        chat["tools"] = [_tool(t) for t in body["tools"]]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if _object(body, "reasoning").get("effort"):
        chat["reasoning_effort"] = body["reasoning"]["effort"]
    text_format = _object(_object(body, "text"), "format")
    if text_format.get("type") == "json_schema":
        schema = {k: text_format[k] for k in ("name", "schema", "strict", "description") if k in text_format}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    return chat


def _input_messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise GatewayError(400, "`input` must be a string or a list of input items")
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message" if "role" in item else None)
        last = messages[-1] if messages and messages[-1]["role"] == "assistant" else None
        if kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or "{}"}}  # fmt: skip
            if last is not None:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "reasoning":
            if item.get("encrypted_content"):
                raise GatewayError(400, "encrypted reasoning items are not supported")
            parts = item.get("content") or item.get("summary") or [{}]
            text = _text(parts[:1]) if isinstance(parts, list) else None
            if not isinstance(text, str):
                raise GatewayError(400, "a reasoning item's `content` must be a list of text parts")
            if last is not None and "reasoning" not in last:
                last["reasoning"] = text
            else:
                messages.append({"role": "assistant", "reasoning": text})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": _text(item.get("output"))}
            )
        elif kind == "message":
            role = {"developer": "system"}.get(item.get("role"), item.get("role"))
            if role not in ("user", "assistant", "system"):
                raise GatewayError(
                    400, f"input message role must be user, assistant, system or developer, not {role!r}"
                )
            content = item.get("content")
            if role == "assistant":
                text = _text(content)
                if last is not None and last.get("content") is None:
                    last["content"] = text
                else:
                    messages.append({"role": "assistant", "content": text})
            else:
                messages.append({"role": role, "content": content if isinstance(content, str) else _parts(content)})
        else:
            raise GatewayError(400, f"input item type {kind!r} is not supported on recorded session routes")
    return messages


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    """`body[name]` when it is an object, `{}` when it is absent; a 400 naming it otherwise."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GatewayError(400, f"`{name}` must be an object")
    return value


def _parts(content: Any) -> list[dict[str, Any]]:
    """Responses content parts as chat content parts (text only)."""
    if not isinstance(content, list):
        raise GatewayError(400, "message `content` must be a string or a list of content parts")
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in (
            "input_text",
            "output_text",
            "text",
            "reasoning_text",
        ):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise GatewayError(400, f"content part type {kind!r} is not supported on recorded session routes")
        parts.append({"type": "text", "text": part.get("text") or ""})
    return parts


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p["text"] for p in _parts(content))


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise GatewayError(
            400, f"only function tools with a name are supported on recorded session routes, not {kind!r}"
        )
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise GatewayError(400, "`tool_choice` must be auto, none, required or {type: function, name}")


def from_chat(answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The Response for vLLM's chat `answer` of the converted request `body`."""
    choice = answer["choices"][0]
    message = choice["message"]
    output: list[dict[str, Any]] = []
    if message.get("reasoning"):
        output.append(_reasoning_item(message["reasoning"]))
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        output.append(_message_item(message.get("content") or ""))
    for call in calls:
        output.append(_call_item(call["id"], call["function"]["name"], call["function"]["arguments"]))
    response = _response(_id("resp"), body, answer.get("model"), answer.get("created"), "completed")
    return _finished(response, output, choice.get("finish_reason"), answer.get("usage") or {})


def _response(rid: str, body: dict[str, Any], model: Any, created: Any, status: str) -> dict[str, Any]:
    """A Response without output: what it echoes of the request."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created or int(time.time()),
        "model": model,
        "status": status,
        "incomplete_details": None,
        "error": None,
        "instructions": body.get("instructions"),
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": body.get("truncation", "disabled"),
        "metadata": body.get("metadata"),
        "usage": None,
    }


def _finished(response: dict[str, Any], output: list, finish_reason: str | None, usage: dict) -> dict[str, Any]:
    truncated = finish_reason == "length"
    return {
        **response,
        "status": "incomplete" if truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": output,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens", 0),
        },
    }


def _reasoning_item(text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": _id("rs"), "summary": [], "status": "completed",
            "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def _message_item(text: str) -> dict[str, Any]:
    return {"type": "message", "id": _id("msg"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}  # fmt: skip


def _call_item(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "id": _id("fc"), "call_id": call_id, "name": name, "arguments": arguments,
            "status": "completed"}  # fmt: skip


def conversation(chat: dict[str, Any], message: dict[str, Any]) -> list[dict[str, Any]]:
    """What a stored response keeps: the chat messages of its request and the assistant `message` it answered."""
    reply = {k: message[k] for k in ("content", "tool_calls", "reasoning") if message.get(k)}
    return [*chat["messages"], {"role": "assistant", **reply}]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Stream:
    """The Responses API's server-sent events for a chat turn's chunks, fed as the engine samples them:
    `response.created`, each output item (reasoning, message, function call) added, filled by deltas and done, then
    `response.completed` (or `response.incomplete` at the token limit) with the whole Response. Afterwards
    `response` is that Response and `message` the chat message it answered (what a stored response keeps)."""

    def __init__(self, body: dict[str, Any]):
        self.body = body
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.open = False
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call index -> chat tool call
        self.response: dict[str, Any] = {}
        self.message: dict[str, Any] = {"role": "assistant", "content": ""}
        self.usage: dict[str, Any] = {}
        self.text = HeldWhitespace()

    def feed(self, chunk: dict[str, Any]) -> list[str]:
        events = []
        if not self.response:
            self.response = _response(_id("resp"), self.body, chunk.get("model"), chunk.get("created"), "in_progress")
            events += [self._event("response.created", response=self.response),
                       self._event("response.in_progress", response=self.response)]  # fmt: skip
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                events += self._text("reasoning", reasoning)
            text = self.text.shown(delta.get("content"), self.open and self.items[-1]["type"] == "message")
            if text:
                events += self._text("message", text)
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason") is not None:
                events += self._finish(choice["finish_reason"])
        return events

    def error(self, status: int, message: str) -> list[str]:
        """The event a stream ends with when the turn fails after its first event (the API's `error` event)."""
        return [self._event("error", code=str(status), message=message, param=None)]

    def _event(self, kind: str, **payload: Any) -> str:
        self.sequence += 1
        data = {"type": kind, "sequence_number": self.sequence - 1, **payload}
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _where(self, content: bool = True) -> dict[str, Any]:
        where = {"item_id": self.items[-1]["id"], "output_index": len(self.items) - 1}
        return {**where, "content_index": 0} if content else where

    def _add(self, item: dict[str, Any], shown: dict[str, Any]) -> list[str]:
        events = self._close()
        self.items.append(item)
        self.open = True
        return [*events, self._event("response.output_item.added", output_index=len(self.items) - 1, item=shown)]

    def _text(self, kind: str, text: str) -> list[str]:
        events = []
        if not self.open or self.items[-1]["type"] != kind:
            item = _reasoning_item("") if kind == "reasoning" else _message_item("")
            events += self._add(item, {**item, "status": "in_progress", "content": []})
            if kind == "message":
                events.append(self._event("response.content_part.added", **self._where(), part=item["content"][0]))
        self.items[-1]["content"][0]["text"] += text
        key = "reasoning" if kind == "reasoning" else "content"
        self.message[key] = self.message.get(key, "") + text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        return [*events, self._event(name, **self._where(), delta=text, **extra)]

    def _call(self, call: dict[str, Any]) -> list[str]:
        events = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        if index not in self.calls:
            self.calls[index] = {"id": call.get("id"), "type": "function",
                                 "function": {"name": function.get("name") or "", "arguments": ""}}  # fmt: skip
            item = _call_item(call.get("id"), function.get("name") or "", "")
            events += self._add(item, {**item, "status": "in_progress"})
        if function.get("arguments"):
            self.items[-1]["arguments"] += function["arguments"]
            self.calls[index]["function"]["arguments"] += function["arguments"]
            events.append(self._event("response.function_call_arguments.delta", **self._where(False),
                                      delta=function["arguments"]))  # fmt: skip
        return events

    def _close(self) -> list[str]:
        if not self.open:
            return []
        self.open = False
        item = self.items[-1]
        if item["type"] == "function_call":
            done = [self._event("response.function_call_arguments.done", **self._where(False), name=item["name"],
                                arguments=item["arguments"])]  # fmt: skip
        elif item["type"] == "reasoning":
            done = [self._event("response.reasoning_text.done", **self._where(), text=item["content"][0]["text"])]
        else:
            part = item["content"][0]
            done = [self._event("response.output_text.done", **self._where(), text=part["text"], logprobs=[]),
                    self._event("response.content_part.done", **self._where(), part=part)]  # fmt: skip
        return [*done, self._event("response.output_item.done", output_index=len(self.items) - 1, item=item)]

    def _finish(self, finish_reason: str) -> list[str]:
        empty = not self.calls and all(item["type"] != "message" for item in self.items)
        events = self._text("message", "") if empty else []  # the API's shape of an empty reply
        events += self._close()
        if self.calls:
            self.message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        self.response = _finished(self.response, self.items, finish_reason, self.usage)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=self.response)]
