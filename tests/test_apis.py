"""The Anthropic Messages and OpenAI Responses APIs at session URLs, through the official SDKs (`anthropic`, `openai`)
and litellm, unmodified, against the tiny model on 2 CPU replicas: what each SDK returns is what the trajectory
recorded (the sampled runs decoded), the prompt is the one vLLM's own route renders, append-only loops have 0 forks,
bad input gets a 400 and the gateway keeps serving."""

from __future__ import annotations

import json

import anthropic
import httpx
import litellm
import openai
import pytest

from tests.helpers import AUTH, FORCE, FORCED_TURN, TOOLS, sampled_runs, trajectory
from trl.agents.server.gateway import Gateway, GatewayConfig
from trl.agents.server.upstream import UpstreamError


FUNCTION = TOOLS[0]["function"]
ANTHROPIC_TOOLS = [{"name": FUNCTION["name"], "description": FUNCTION["description"],
                    "input_schema": FUNCTION["parameters"]}]  # fmt: skip
RESPONSES_TOOLS = [{"type": "function", **FUNCTION}]
REASONING = "List the files first."
CALL = {"command": "ls", "all": True}


@pytest.fixture(scope="module")
def plain(plain_bias):
    """Sampling settings for a free turn whose text is content only (plain ASCII text, no thinking)."""
    return {"logit_bias": plain_bias, "chat_template_kwargs": {"enable_thinking": False}}


def first_prompt(segment: dict) -> list[int]:
    """The tokens before the first sampled one: what the engine saw on the first turn."""
    return segment["token_ids"][: segment["mask"].index(1)]


def append_only(gateway, sid: str, turns: int) -> tuple[dict, list[list[int]]]:
    """The session's one segment (0 forks) and its `turns` sampled runs."""
    traj = trajectory(gateway, sid)
    assert traj["forks"] == 0 and len(traj["segments"]) == 1
    (segment,) = traj["segments"]
    runs = sampled_runs(segment)
    assert len(runs) == turns
    return segment, runs


def render(gateway, path: str, body: dict) -> list[int]:
    """vLLM's own rendering of `body` on a replica (`/v1/messages/render`, `/v1/responses/render`)."""
    response = httpx.post(f"{gateway.replica_urls()[0]}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["token_ids"]


def test_anthropic_messages_with_tools_streaming_and_not(gateway, tiny_model_dir, tokenizer, plain):
    sid = "anthropic-tools"
    client = anthropic.Anthropic(
        base_url=f"{gateway.url}/sessions/{sid}", api_key="unused", max_retries=0, timeout=120
    )
    request = {"model": tiny_model_dir, "max_tokens": 200, "system": "You are a careful agent.",
               "tools": ANTHROPIC_TOOLS}  # fmt: skip
    messages = [{"role": "user", "content": "What is in this folder?"}]
    first = client.messages.create(**request, messages=messages, extra_body=FORCE)
    assert first.stop_reason == "tool_use"
    thinking, call = first.content
    assert thinking.type == "thinking" and thinking.thinking.strip() == REASONING
    assert call.type == "tool_use" and call.name == "shell" and call.input == CALL
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a.py"}]},
    ]
    with client.messages.stream(**request, messages=messages, extra_body=FORCE) as stream:
        events = [event.type for event in stream]
        second = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop" and "content_block_delta" in events
    assert [b.type for b in second.content] == ["thinking", "tool_use"] and second.content[1].input == CALL
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in second.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": second.content[1].id, "content": "ok"},
                                     {"type": "text", "text": "Now explain."}]},
    ]  # fmt: skip
    third = client.messages.create(**{**request, "max_tokens": 12}, messages=messages, extra_body=plain)
    assert third.stop_reason in {"end_turn", "max_tokens"}

    segment, runs = append_only(gateway, sid, turns=3)
    for run in runs[:2]:
        assert tokenizer.decode(run, skip_special_tokens=False).startswith(f"<think>\n{REASONING}")
        assert json.loads(tokenizer.decode(run).split("<tool_call>")[1].split("</tool_call>")[0])["arguments"] == CALL
    assert tokenizer.decode(runs[2], skip_special_tokens=True) == third.content[0].text
    vllm_prompt = render(gateway, "/v1/messages/render", {**request, "messages": messages[:1]})
    assert first_prompt(segment) == vllm_prompt  # the conversion renders what vLLM's own /v1/messages renders


def test_system_messages_between_turns_render_as_vllms_route_does(gateway, tiny_model_dir):
    """Claude Code 2.1.337 puts reminders in `role: "system"` messages between turns (tests/data/cli_requests):
    recorded as system messages where they stand, the prompt is the one vLLM's own /v1/messages renders."""
    sid = "anthropic-inline-system"
    client = anthropic.Anthropic(base_url=f"{gateway.url}/sessions/{sid}", api_key="-", max_retries=0, timeout=120)
    reminder = [{"type": "text", "text": "Reminder: be brief.", "cache_control": {"type": "ephemeral"}}]
    request = {"model": tiny_model_dir, "max_tokens": 4, "system": "You are a careful agent.",
               "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": reminder}]}  # fmt: skip
    reply = client.messages.create(**request)
    assert reply.usage.output_tokens >= 1
    segment, _ = append_only(gateway, sid, turns=1)
    assert first_prompt(segment) == render(gateway, "/v1/messages/render", request)


def test_openai_responses_with_tools_streaming_and_previous_response_id(gateway, tiny_model_dir, tokenizer, plain):
    sid = "responses-tools"
    client = openai.OpenAI(base_url=f"{gateway.url}/sessions/{sid}/v1", api_key="unused", max_retries=0, timeout=120)
    request = {"model": tiny_model_dir, "instructions": "You are a careful agent.", "tools": RESPONSES_TOOLS,
               "max_output_tokens": 200}  # fmt: skip
    first = client.responses.create(**request, input="What is in this folder?", extra_body=FORCE)
    kinds = [item.type for item in first.output]
    assert kinds == ["reasoning", "function_call"], kinds
    assert first.output[0].content[0].text.strip() == REASONING
    call = first.output[1]
    assert call.name == "shell" and json.loads(call.arguments) == CALL
    stream = client.responses.create(
        **request,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "a.py"}],
        stream=True,
        extra_body=FORCE,
    )
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    second = events[-1].response
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == CALL == json.loads(second.output[-1].arguments)
    third = client.responses.create(
        **{**request, "max_output_tokens": 12},
        previous_response_id=second.id,
        input=[{"type": "function_call_output", "call_id": second.output[-1].call_id, "output": "ok"},
               {"role": "user", "content": "Now explain."}],
        extra_body=plain,
    )  # fmt: skip
    assert third.status in {"completed", "incomplete"}

    segment, runs = append_only(gateway, sid, turns=3)
    assert [tokenizer.decode(run[:-1]) for run in runs[:2]] == [FORCED_TURN, FORCED_TURN]
    assert tokenizer.decode(runs[2], skip_special_tokens=True) == third.output_text
    body = {k: v for k, v in request.items() if k != "max_output_tokens"}
    vllm_prompt = render(gateway, "/v1/responses/render", {**body, "input": "What is in this folder?"})
    assert first_prompt(segment) == vllm_prompt


def test_responses_echoing_the_whole_input_is_append_only(gateway, tiny_model_dir):
    """Agents that keep their own history (store=false, no previous_response_id) send the output items back."""
    client = openai.OpenAI(base_url=f"{gateway.url}/sessions/echo/v1", api_key="unused", max_retries=0, timeout=120)
    request = {"model": tiny_model_dir, "tools": RESPONSES_TOOLS, "max_output_tokens": 200, "store": False}
    items: list = [{"role": "user", "content": "What is in this folder?"}]
    for output in ("a.py", "b.py"):
        response = client.responses.create(**request, input=items, extra_body=FORCE)
        items += [item.model_dump(exclude_none=True) for item in response.output]
        items.append({"type": "function_call_output", "call_id": response.output[-1].call_id, "output": output})
    traj = trajectory(gateway, "echo")
    assert traj["forks"] == 0 and len(traj["segments"][0]["turns"]) == 2
    with pytest.raises(openai.BadRequestError, match="not a stored response"):
        client.responses.create(**request, input="more", previous_response_id=response.id)  # store=false


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_in_front_of_messages_and_responses(gateway, tiny_model_dir, tokenizer, stream):
    """litellm's Anthropic provider (OpenAI-style calls translated to the Messages API) and its Responses API.

    litellm sends `extra_body` to the Messages API nested, not merged, so no structured output can force a tool call
    there: the Messages half checks the tools reach the prompt and the reply is what was sampled, over two turns."""
    sid = f"litellm-apis-{stream}"
    messages = [{"role": "user", "content": "What is in this folder?"}]
    kwargs = {"model": f"anthropic/{tiny_model_dir}", "max_tokens": 8, "tools": TOOLS,
              "api_base": f"{gateway.url}/sessions/{sid}-m", "api_key": "unused",
              # no thinking, so the reply has text (litellm drops an assistant message without any)
              "thinking": {"type": "disabled"}, "allowed_openai_params": ["thinking"]}  # fmt: skip
    for turn in range(2):
        if stream:
            chunks = list(litellm.completion(**kwargs, messages=messages, stream=True))
            reply = litellm.stream_chunk_builder(chunks, messages=messages)
        else:
            reply = litellm.completion(**kwargs, messages=messages)
        content = reply.choices[0].message.content or ""
        (segment,) = trajectory(gateway, f"{sid}-m")["segments"]
        assert content.strip() in tokenizer.decode(sampled_runs(segment)[turn])
        messages += [reply.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "And then?"}]
    assert "Run a shell command." in tokenizer.decode(first_prompt(segment))
    assert trajectory(gateway, f"{sid}-m")["forks"] == 0
    response = litellm.responses(
        model=f"openai/{tiny_model_dir}", input="What is in this folder?", tools=RESPONSES_TOOLS,
        max_output_tokens=200, stream=stream, api_base=f"{gateway.url}/sessions/{sid}-r/v1", api_key="unused",
        extra_body=FORCE,
    )  # fmt: skip
    if stream:
        events = list(response)
        response = [e for e in events if getattr(e, "type", None) == "response.completed"][0].response
    calls = [item for item in response.output if item.type == "function_call"]
    assert json.loads(calls[0].arguments) == CALL
    for suffix in ("-m", "-r"):
        assert trajectory(gateway, f"{sid}{suffix}")["forks"] == 0


def test_bad_input_on_the_new_routes_is_a_400_and_the_gateway_keeps_serving(gateway, tiny_model_dir):
    post = lambda path, body: httpx.post(f"{gateway.url}/sessions/bad-apis/v1/{path}", json=body, timeout=60)  # noqa: E731
    user = [{"role": "user", "content": "hi"}]
    cases = {
        "messages without max_tokens": ("messages", {"model": tiny_model_dir, "messages": user}),
        "messages not a list": ("messages", {"model": tiny_model_dir, "messages": "hi", "max_tokens": 4}),
        "unknown block": ("messages", {"model": tiny_model_dir, "max_tokens": 4,
                                       "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
        "server tool": ("messages", {"model": tiny_model_dir, "max_tokens": 4, "messages": user,
                                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        "unknown previous response": ("responses", {"model": tiny_model_dir, "input": "hi",
                                                    "previous_response_id": "resp_nope"}),
        "input not a list": ("responses", {"model": tiny_model_dir, "input": 3}),
        "built-in tool": ("responses", {"model": tiny_model_dir, "input": "hi", "tools": [{"type": "web_search"}]}),
        "background": ("responses", {"model": tiny_model_dir, "input": "hi", "background": True}),
        "unknown model": ("responses", {"model": "nope", "input": "hi"}),
    }  # fmt: skip
    for name, (path, body) in cases.items():
        response = post(path, body)
        assert response.status_code in (400, 404), (name, response.text)
        assert response.json()["error"]["message"], name
    assert (
        "previous_response_id" in post("responses", cases["unknown previous response"][1]).json()["error"]["message"]
    )
    ok = post("responses", {"model": tiny_model_dir, "input": "still there?", "max_output_tokens": 4})
    assert ok.status_code == 200 and ok.json()["object"] == "response"
    assert httpx.get(f"{gateway.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{gateway.url}/sessions/bad-apis/trajectory", headers=AUTH, timeout=30).status_code == 200


class FailingMidStream(Gateway):
    """A gateway whose turns fail after their first event: a replica that drops the connection mid-turn, which
    cannot be timed reliably with the real engine (the error mapping is what is tested, on the real converters)."""

    async def _stream_events(self, sid, body, kind, chat, converter):
        yield "first event\n\n"
        raise UpstreamError(502, {"error": {"message": "replica-0 went away"}}, "replica-0")


@pytest.mark.parametrize("kind", ["chat", "messages", "responses"])
def test_a_turn_failing_after_its_first_event_ends_its_stream_with_the_apis_error_event(kind):
    import asyncio

    gateway = FailingMidStream(GatewayConfig(replicas=[("replica-0", "http://127.0.0.1:9")]))
    body = {"model": "m", "stream": True, "max_tokens": 4,
            **({"input": "hi"} if kind == "responses" else {"messages": [{"role": "user", "content": "hi"}]})}  # fmt: skip

    async def events() -> list[str]:
        return [event async for event in await gateway.stream_turn("s1", body, kind)]

    first, *rest = asyncio.run(events())
    assert first == "first event\n\n" and gateway.errors == {502: 1}
    data = [json.loads(line[len("data: "):]) for event in rest for line in event.splitlines()
            if line.startswith("data: {")]  # fmt: skip
    assert len(data) == 1
    if kind == "chat":
        assert data[0]["error"] == {"message": "replica-0 went away", "type": "ServerError", "code": 502}
        assert rest[-1] == "data: [DONE]\n\n"
    elif kind == "messages":
        assert rest[0].startswith("event: error\n")
        assert data[0] == {"type": "error", "error": {"type": "api_error", "message": "replica-0 went away"}}
    else:
        assert rest[0].startswith("event: error\n")
        assert data[0]["type"] == "error" and data[0]["message"] == "replica-0 went away" and data[0]["code"] == "502"
