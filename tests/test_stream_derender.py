"""The render servers' stateful streaming derender (`stream_derender.py`, a vLLM endpoint plugin): the same chunks as
vLLM's stateless route, however many engine chunks a call carries; clear refusals of bad or out-of-step calls; and a
gateway whose render server lacks it (here: no render servers, so the replica's own server renders) falls back to
vLLM's route and still streams tool calls and reasoning."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from tests.helpers import FORCE, TOOLS, trajectory, upstream_calls
from trl.agents.server.process import RenderServer
from trl.agents.server.stream_derender import ROUTE
from trl.agents.testing.servers import SERVE_ARGS, serve_async


REPLY = (
    "<think>\nI should list the files " + "and think it over " * 20 + "first.\n</think>\n\nLet me look. é ü 漢字\n"
    '<tool_call>\n{"name": "shell", "arguments": {"command": "ls -la /tmp", "all": true}}\n</tool_call>'
)
CHAT = {"messages": [{"role": "user", "content": "What is in /tmp?"}], "tools": TOOLS, "stream": True}


@pytest.fixture(scope="module")
def render(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("render") / "render.log"
    server = RenderServer(tiny_model_dir, args=[*SERVE_ARGS, "--reasoning-parser", "qwen3"], log_path=log)
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reply_ids(render, tiny_model_dir):
    body = {"model": tiny_model_dir, "prompt": REPLY, "add_special_tokens": False}
    return render.post("/tokenize", json=body).json()["tokens"]


def engine_chunk(ids: list[int], i: int, size: int = 1) -> dict:
    """The engine chunk of `size` tokens from token `i` (the engine sends several with `stream_interval`)."""
    finish = "stop" if i + size >= len(ids) else None
    return {"request_id": "r-1", "choices": [{"index": 0, "token_ids": ids[i : i + size], "finish_reason": finish}]}


def stateless(render, model: str, ids: list[int]) -> list[dict]:
    """The chunks of vLLM's own streaming derender, one engine chunk per call (as its parsers need)."""
    chat, state, chunks = {**CHAT, "model": model}, None, []
    for i in range(len(ids)):
        body = {"stream": True, "generate_chunk": engine_chunk(ids, i), "stream_state": state, "chat_request": chat,
                "prompt_tokens": 10, "prompt_token_ids": [1]}  # fmt: skip
        answer = render.post("/v1/chat/completions/derender", json=body)
        assert answer.status_code == 200, answer.text
        state = answer.json()["stream_state"]
        chunks.append(answer.json()["chunk"])
    return chunks


def stateful(render, model: str, ids: list[int], per_call: int, stream_id: str) -> list[dict]:
    chunks = []
    for start in range(0, len(ids), per_call):
        body = {"stream_id": stream_id, "position": start, "model": model,
                "generate_chunks": [engine_chunk(ids, i) for i in range(start, min(start + per_call, len(ids)))]}  # fmt: skip
        if start == 0:
            body |= {"chat_request": {**CHAT, "model": model}, "prompt_token_ids": [1]}
        answer = render.post(ROUTE, json=body)
        assert answer.status_code == 200, answer.text
        chunks += answer.json()["chunks"]
    return chunks


def said(chunks: list[dict]) -> dict:
    """What a client reads from a stream: its texts, tool calls and finish reason, ids aside."""
    choices = [chunk["choices"][0] for chunk in chunks]
    calls: dict[int, dict] = {}
    for call in [call for c in choices for call in c["delta"].get("tool_calls") or []]:
        entry = calls.setdefault(call["index"], {"name": "", "arguments": "", "ids": 0})
        entry["ids"] += call.get("id") is not None
        for key in ("name", "arguments"):
            entry[key] += (call.get("function") or {}).get(key) or ""
    return {
        "content": "".join(c["delta"].get("content") or "" for c in choices),
        "reasoning": "".join(c["delta"].get("reasoning") or "" for c in choices),
        "calls": calls,
        "finish": [c["finish_reason"] for c in choices if c["finish_reason"]],
    }


def deltas(chunks: list[dict]) -> list[tuple]:
    """Each chunk's delta and finish reason, tool-call ids (random) left out."""
    out = []
    for chunk in chunks:
        (choice,) = chunk["choices"]
        delta = {k: v for k, v in choice["delta"].items() if v not in (None, [])}
        delta["tool_calls"] = [{k: v for k, v in call.items() if k != "id"} for call in delta.get("tool_calls", [])]
        out.append((json.dumps(delta, sort_keys=True), choice["finish_reason"]))
    return out


def test_the_same_chunks_as_vllms_route_however_many_engine_chunks_a_call_carries(render, tiny_model_dir, reply_ids):
    expected = deltas(stateless(render, tiny_model_dir, reply_ids))
    reasoning = "".join(json.loads(d).get("reasoning", "") for d, _ in expected)
    arguments = "".join(
        (c.get("function") or {}).get("arguments") or "" for d, _ in expected for c in json.loads(d)["tool_calls"]
    )
    assert reasoning.startswith("\nI should list") and json.loads(arguments) == {"command": "ls -la /tmp", "all": True}
    assert expected[-1][1] == "tool_calls"
    for per_call in (1, 3, 16):
        assert deltas(stateful(render, tiny_model_dir, reply_ids, per_call, f"same-{per_call}")) == expected, per_call


def test_engine_chunks_of_several_tokens_say_what_one_token_chunks_say(render, tiny_model_dir, reply_ids):
    """With `--stream-interval` the engine sends several tokens per chunk; the plugin still feeds its parser one token
    at a time (vLLM's hermes parser loses the start of the arguments otherwise) and sends one merged delta per chunk."""
    expected = said(stateless(render, tiny_model_dir, reply_ids))
    assert expected["calls"][0]["ids"] == 1 and expected["calls"][0]["name"] == "shell"
    for size in (3, 8):
        chunks = []
        for start in range(0, len(reply_ids), 2 * size):  # two engine chunks per call
            body = {"stream_id": f"sized-{size}", "position": start, "model": tiny_model_dir,
                    "generate_chunks": [engine_chunk(reply_ids, i, size) for i in (start, start + size) if i < len(reply_ids)]}  # fmt: skip
            if start == 0:
                body |= {"chat_request": {**CHAT, "model": tiny_model_dir}, "prompt_token_ids": [1]}
            answer = render.post(ROUTE, json=body)
            assert answer.status_code == 200, answer.text
            chunks += answer.json()["chunks"]
        assert len(chunks) == -(-len(reply_ids) // size)
        assert said(chunks) == expected, size


def test_bad_and_out_of_step_calls_are_refused_and_the_server_goes_on(render, tiny_model_dir, reply_ids):
    refused = render.post(ROUTE, json={"stream_id": 7, "generate_chunks": []})
    assert refused.status_code == 400 and "stream_id" in refused.json()["error"]["message"]
    refused = render.post(ROUTE, json={"stream_id": "s", "position": 0, "generate_chunks": [], "chat_request": {}})
    assert refused.status_code == 400 and "chat_request" in refused.json()["error"]["message"]
    unknown = render.post(ROUTE, json={"stream_id": "never-started", "position": 4, "generate_chunks": []})
    assert unknown.status_code == 409 and "'never-started' is unknown" in unknown.json()["error"]["message"]
    first = {"stream_id": "skips", "position": 0, "model": tiny_model_dir, "chat_request": {**CHAT, "model": tiny_model_dir},
             "generate_chunks": [engine_chunk(reply_ids, 0)]}  # fmt: skip
    assert render.post(ROUTE, json=first).status_code == 200
    skipped = render.post(
        ROUTE, json={"stream_id": "skips", "position": 3, "generate_chunks": [engine_chunk(reply_ids, 3)]}
    )
    assert skipped.status_code == 409 and re.search(r"at output token 1, the call is at 3", skipped.text)
    again = render.post(
        ROUTE, json={"stream_id": "skips", "position": 1, "generate_chunks": [engine_chunk(reply_ids, 1)]}
    )
    assert again.status_code == 409  # a stream out of step is dropped: its parser's state is no longer trusted
    expected = deltas(stateless(render, tiny_model_dir, reply_ids))
    assert deltas(stateful(render, tiny_model_dir, reply_ids, 5, "after-refusals")) == expected


def test_a_gateway_without_the_plugin_streams_through_vllms_route(tiny_model_dir, tmp_path):
    # a gateway of its own: no render servers (the shared gateway's have the plugin), one replica
    extra = ["--render-servers", "0", "--reasoning-parser", "qwen3", "--structured-outputs-config",
             '{"enable_in_reasoning": true}']  # fmt: skip
    with serve_async(tiny_model_dir, tmp_path / "logs", *extra, replicas=1) as gateway:
        client = openai.OpenAI(
            base_url=f"{gateway.url}/sessions/no-plugin/v1", api_key="-", timeout=120, max_retries=0
        )
        messages = [{"role": "user", "content": "What is in this folder?"}]
        for turn in range(2):
            chunks = list(client.chat.completions.create(model=tiny_model_dir, messages=messages, tools=TOOLS, max_tokens=200,
                                                         stream=True, extra_body=FORCE))  # fmt: skip
            deltas_ = [c.choices[0].delta for c in chunks if c.choices]
            calls = [call for d in deltas_ for call in d.tool_calls or []]
            assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"command": "ls", "all": True}
            assert "".join(getattr(d, "reasoning", None) or "" for d in deltas_).strip() == "List the files first."
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            call = {
                "id": calls[0].id,
                "type": "function",
                "function": {"name": "shell", "arguments": '{"command": "ls", "all": true}'},
            }
            messages += [{"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": calls[0].id, "content": "a.py"}]  # fmt: skip
            calls_made = upstream_calls(gateway.url)
            assert calls_made.get(ROUTE) == 1, calls_made  # tried once (404), then vLLM's route for this server
            assert calls_made["/v1/chat/completions/derender"] >= (turn + 1) * 10
        assert trajectory(gateway, "no-plugin")["forks"] == 0
