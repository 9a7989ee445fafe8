"""The Anthropic Messages and OpenAI Responses conversions byte for byte, without an engine: requests to chat requests
(and the 400 of each refused shape), chat answers to wire answers, chat chunks to server-sent events, and the
conversation a stored response keeps. They pin today's wire format before the API families move into packages of
their own (issue 36): `tests/data/api_conversions.json` holds what the conversions wrote when it was recorded.

Ids and times are made deterministic (`uuid.uuid4`, `time.time`). After a deliberate change of the wire format,
re-record with `python -m tests.test_api_conversions` and review the diff of the JSON file. What the engine renders
from the converted requests is checked against vLLM's own render routes in `tests/test_apis.py`.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from trl.agents.server import messages_api, responses_api
from trl.agents.server.upstream import GatewayError


GOLDEN = Path(__file__).parent / "data" / "api_conversions.json"
TOOL = {"name": "shell", "description": "Run a command", "input_schema": {"type": "object", "properties": {
    "command": {"type": "string"}}, "required": ["command"]}}  # fmt: skip

MESSAGES_REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    "system_messages_between_turns": {  # Claude Code 2.1.337's reminders: a list first, a string on later turns
        "model": "m", "max_tokens": 16, "system": "Top.",
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "system", "content": [{"type": "text", "text": "Reminder.", "cache_control": {"type": "ephemeral"}}]},
                     {"role": "assistant", "content": "ok"}, {"role": "system", "content": "Again."},
                     {"role": "system", "content": ""}]},
    "claude_code_like": {
        "model": "m", "max_tokens": 32000, "stream": True, "metadata": {"user_id": "u"},
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc"},
                   {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<env>cwd: /repo</env>"},
                                         {"type": "text", "text": "Fix the bug.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look first.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": "ls"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a.py"}]},
                {"type": "text", "text": "Go on."}]},
        ],
        "tools": [{**TOOL, "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "temperature": 1.0,
    },
    "thinking_disabled_and_extensions": {
        "model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "disabled"}, "stop_sequences": ["END"], "logit_bias": {"5": -100},
        "chat_template_kwargs": {"custom": 1}, "tool_choice": {"type": "tool", "name": "shell"}, "tools": [TOOL],
    },
    "tool_choice_any_and_none": {
        "model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL],
        "tool_choice": {"type": "any"},
    },
    "tool_result_string_and_error": {
        "model": "m", "max_tokens": 8, "system": "Be brief.",
        "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
            {"type": "tool_result", "tool_use_id": "t2"}]}],
    },
    # refused today (each a 400 naming what cannot be converted)
    "refused_unknown_role": {"model": "m", "max_tokens": 8, "messages": [{"role": "developer", "content": "hi"}]},
    "refused_system_message_not_text": {"model": "m", "max_tokens": 8, "messages": [{"role": "system", "content": 5}]},
    "refused_no_max_tokens": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "refused_messages_not_a_list": {"model": "m", "max_tokens": 8, "messages": "hi"},
    "refused_mcp_servers": {"model": "m", "max_tokens": 8, "messages": [], "mcp_servers": [{"url": "x"}]},
    "refused_image_block": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
    "refused_tool_result_with_image": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]}]},
    "refused_server_tool": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
                            "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    "refused_bad_system": {"model": "m", "max_tokens": 8, "messages": [], "system": 5},
    "refused_bad_thinking": {"model": "m", "max_tokens": 8, "messages": [], "thinking": "on"},
}  # fmt: skip

FUNCTION = {"type": "function", "name": "shell", "description": "Run a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}, "strict": False}  # fmt: skip
STORED = {"resp_prev": [{"role": "system", "content": "old instructions"}, {"role": "user", "content": "first"},
                        {"role": "assistant", "content": "answer"}]}  # fmt: skip

RESPONSES_REQUESTS: dict[str, dict[str, Any]] = {
    "plain_string": {"model": "m", "input": "hi", "max_output_tokens": 16},
    "codex_like": {
        "model": "m", "instructions": "You are Codex.", "stream": True, "store": False, "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": "auto"}, "include": ["reasoning.encrypted_content"],
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Fix the bug."}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Look."}]},
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{\"command\": \"ls\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.py"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Done.", "annotations": []}]},
        ],
        "tools": [FUNCTION], "tool_choice": "auto",
    },
    "previous_response_and_format": {
        "model": "m", "previous_response_id": "resp_prev", "input": [{"role": "user", "content": "again"}],
        "tool_choice": {"type": "function", "name": "shell"}, "tools": [FUNCTION],
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True}},
        "seed": 3,
    },
    "json_object": {"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}},
    # refused today
    "refused_namespace_tool": {"model": "m", "input": "hi", "tools": [
        {"type": "namespace", "name": "multi_agent_v1", "tools": [FUNCTION]}]},
    "refused_hosted_tool": {"model": "m", "input": "hi", "tools": [{"type": "web_search"}]},
    "refused_unknown_previous": {"model": "m", "input": "hi", "previous_response_id": "resp_nope"},
    "refused_background": {"model": "m", "input": "hi", "background": True},
    "refused_tools_not_a_list": {"model": "m", "input": "hi", "tools": {"type": "function"}},
}  # fmt: skip

CHAT_ANSWERS: dict[str, dict[str, Any]] = {
    "text": {"id": "chatcmpl-1", "model": "m", "created": 1700000000, "prompt_token_ids": [1, 2],
             "choices": [{"index": 0, "finish_reason": "stop", "stop_reason": None, "token_ids": [3, 4],
                          "message": {"role": "assistant", "content": "Hello.", "reasoning": None}}],
             "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
    "reasoning_and_tool_call": {
        "id": "chatcmpl-2", "model": "m", "created": 1700000001,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "", "reasoning": "List first.",
            "tool_calls": [{"id": "call_9", "type": "function",
                            "function": {"name": "shell", "arguments": "{\"command\": \"ls\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}},
    "stop_string": {"id": "chatcmpl-3", "model": "m", "created": 1700000002,
                    "choices": [{"index": 0, "finish_reason": "stop", "stop_reason": "END",
                                 "message": {"role": "assistant", "content": "abc"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}},
    "length_empty": {"id": "chatcmpl-4", "model": "m", "created": 1700000003,
                     "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": ""}}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}},
}  # fmt: skip


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-s", "model": "m", "created": 1700000100, "choices": choices, "usage": usage}


USAGE = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
CHUNK_STREAMS: dict[str, list[dict[str, Any]]] = {
    "thinking_text_tool_call": [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "Look "}), chunk({"reasoning": "first."}),
        chunk({"content": "\n\n"}), chunk({"content": "Listing. "}), chunk({"content": "é 漢"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "shell", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\": "}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}),
        chunk({}, finish="tool_calls", usage=USAGE),
    ],
    "empty_reply_at_length": [chunk({"role": "assistant", "content": ""}), chunk({}, finish="length", usage=USAGE)],
    "text_then_stop_string": [chunk({"content": "abc "}), chunk({"content": " "}),
                              chunk({"content": ""}, finish="stop", usage=USAGE)],
}  # fmt: skip


def _deterministic(monkeypatch) -> None:
    counter = iter(range(1, 10**6))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))
    monkeypatch.setattr(responses_api.time, "time", lambda: 1700000999.5)


def _converted(convert) -> dict[str, Any]:
    try:
        return {"chat": convert()}
    except GatewayError as error:
        return {"status": error.status, "error": str(error)}


def record() -> dict[str, Any]:
    """What the conversions write today, for every case above (call with ids and time made deterministic)."""
    out: dict[str, Any] = {"messages": {}, "responses": {}}
    for name, body in MESSAGES_REQUESTS.items():
        out["messages"][f"request/{name}"] = _converted(lambda body=body: messages_api.to_chat(body))
    for name, body in RESPONSES_REQUESTS.items():
        stored = json.loads(json.dumps(STORED))
        out["responses"][f"request/{name}"] = _converted(
            lambda body=body, stored=stored: responses_api.to_chat(body, stored)
        )
    body = RESPONSES_REQUESTS["codex_like"]
    for name, answer in CHAT_ANSWERS.items():
        out["messages"][f"answer/{name}"] = messages_api.from_chat(answer)
        out["responses"][f"answer/{name}"] = responses_api.from_chat(answer, body)
    for name, chunks in CHUNK_STREAMS.items():
        messages_stream, responses_stream = messages_api.Stream(), responses_api.Stream(body)
        out["messages"][f"stream/{name}"] = [e for c in chunks for e in messages_stream.feed(c)]
        out["responses"][f"stream/{name}"] = [e for c in chunks for e in responses_stream.feed(c)]
        chat = responses_api.to_chat(body, {})
        out["responses"][f"stored/{name}"] = responses_api.conversation(chat, responses_stream.message)
    out["messages"]["error_event"] = [messages_api.Stream().error(s, "why") for s in (400, 500, 503)]
    out["responses"]["error_event"] = responses_api.Stream(body).error(502, "why")
    return out


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _deterministic(monkeypatch)
        return record()


@pytest.mark.parametrize("api", ["messages", "responses"])
def test_every_case_converts_as_recorded(api, golden, recorded):
    assert set(recorded[api]) == set(golden[api]), "cases added or removed: re-record (see the module docstring)"
    differ = [case for case in golden[api] if recorded[api][case] != golden[api][case]]
    assert not differ, f"{api}: the wire format changed for {differ}"


def test_the_recording_covers_what_the_gateway_refuses_and_accepts(golden):
    """Every refused case was recorded as a 400 with a message, every accepted one as a chat request."""
    for api in ("messages", "responses"):
        for case, out in golden[api].items():
            if case.startswith("request/refused"):
                assert out["status"] == 400 and out["error"], (api, case)
            elif case.startswith("request/"):
                assert "chat" in out and out["chat"]["messages"], (api, case)


CLI_REQUESTS = Path(__file__).parent / "data" / "cli_requests"  # captured from the CLIs (README.md there)


@pytest.mark.parametrize("name", ["first", "after_tool"])
def test_claude_codes_requests_convert_with_its_system_messages_where_they_stand(name):
    captured = json.loads((CLI_REQUESTS / f"claude_code_2.1.337_{name}.json").read_text())
    assert captured["path"].endswith("/v1/messages?beta=true")
    body = captured["body"]
    chat = messages_api.to_chat(body)
    inline = [m for m in body["messages"] if m["role"] == "system"]
    assert inline, "Claude Code 2.1.337 sends system messages between turns: the fixture lost them"
    expected = ["system"]  # the top-level `system` (its billing-header block dropped)
    for message in body["messages"]:
        blocks = message["content"] if isinstance(message["content"], list) else []
        expected += ["tool"] * sum(b.get("type") == "tool_result" for b in blocks)
        if message["role"] != "user" or any(b.get("type") == "text" for b in blocks) or not blocks:
            expected.append(message["role"])
    assert [m["role"] for m in chat["messages"]] == expected
    assert "x-anthropic-billing-header" not in chat["messages"][0]["content"]
    assert [m["content"] for m in chat["messages"] if m["role"] == "system"][1:] == [
        m["content"] if isinstance(m["content"], str) else "".join(b["text"] for b in m["content"]) for m in inline
    ]


if __name__ == "__main__":  # re-record: python -m tests.test_api_conversions
    with pytest.MonkeyPatch.context() as patch:
        _deterministic(patch)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(record(), indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
