"""`trl vllm-serve-async` with 2 CPU replicas (the shared gateway, `tests/conftest.py`): OpenAI clients through session
URLs, token-exact recording under load, forks, sticky routing, errors, auth. A replica dying mid-sync, and its
sessions failing alone: test_weight_sync.py."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import httpx
import litellm
import openai
import pytest

from tests.helpers import AUTH, FORCE, TOOLS, sampled_runs, trajectory, upstream_calls
from trl.agents.server.recording import STATEFUL_DERENDER, cut_at_stop_string


def session_client(gateway, sid: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/sessions/{sid}/v1", api_key="unused", timeout=120, max_retries=0)


def test_openai_chat_with_tools_streaming_and_not(gateway, tiny_model_dir):
    client = session_client(gateway, "openai-tools")
    messages = [{"role": "user", "content": "What is in this folder?"}]
    reply = client.chat.completions.create(
        model=tiny_model_dir, messages=messages, tools=TOOLS, max_tokens=200, extra_body=FORCE
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.reasoning.strip() == "List the files first."
    assert json.loads(message.tool_calls[0].function.arguments) == {"command": "ls", "all": True}
    messages += [message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": "1", "content": "a.py"}]

    before = upstream_calls(gateway.url)
    stream = client.chat.completions.create(
        model=tiny_model_dir,
        messages=messages,
        tools=TOOLS,
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=FORCE,
    )
    chunks = list(stream)
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == {"command": "ls", "all": True}
    assert chunks[-1].usage.completion_tokens > 0
    assert trajectory(gateway, "openai-tools")["forks"] == 0
    # derendered by the render server's plugin (one parser per stream), at most one call per engine chunk
    calls = {path: n - before.get(path, 0) for path, n in upstream_calls(gateway.url).items()}
    assert 1 <= calls[STATEFUL_DERENDER] <= len(chunks) - 1  # the usage chunk is the gateway's own
    assert calls.get("/v1/chat/completions/derender", 0) == 0


def test_a_streamed_turn_leaves_as_it_is_sampled_and_is_recorded_exactly(
    gateway, tiny_model_dir, tokenizer, plain_bias
):
    client = session_client(gateway, "live-stream")
    messages = [{"role": "user", "content": "Tell me a long story."}]
    extra = {"logit_bias": plain_bias, "ignore_eos": True, "return_token_ids": True,
             "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
    warm_up = session_client(gateway, "live-stream-warm-up")  # the first streamed turn of a server warms it up
    list(warm_up.chat.completions.create(model=tiny_model_dir, messages=messages, max_tokens=4, stream=True))
    started = time.monotonic()
    arrivals, content, token_ids = [], [], []
    stream = client.chat.completions.create(
        model=tiny_model_dir, messages=messages, max_tokens=300, stream=True, extra_body=extra
    )
    for chunk in stream:
        if chunk.choices:
            arrivals.append(time.monotonic() - started)
            content.append(chunk.choices[0].delta.content or "")
            token_ids += chunk.choices[0].model_extra.get("token_ids") or []
    assert len(arrivals) >= 3, arrivals  # deltas, not one chunk at the end
    assert arrivals[0] < 0.5 * arrivals[-1], arrivals  # the first left long before the last was sampled
    (segment,) = trajectory(gateway, "live-stream")["segments"]
    (run,) = sampled_runs(segment)
    assert token_ids == run and len(run) == 300
    assert "".join(content) == tokenizer.decode(run, skip_special_tokens=True)
    messages += [{"role": "assistant", "content": "".join(content)}, {"role": "user", "content": "Shorter."}]
    client.chat.completions.create(model=tiny_model_dir, messages=messages, max_tokens=4)
    assert trajectory(gateway, "live-stream")["forks"] == 0


def test_a_client_that_leaves_mid_stream_leaves_nothing_recorded(gateway, tiny_model_dir):
    """The choice: a turn is recorded once its last token is sampled; a client that disconnects before aborts the
    request in the engine, the session stays as it was and serves the next turn."""
    sid, url = "left-mid-stream", gateway.url
    body = {"model": tiny_model_dir, "messages": [{"role": "user", "content": "Go on and on."}], "max_tokens": 3000,
            "ignore_eos": True, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/sessions/{sid}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
    assert received  # some deltas came, then the client closed the connection
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running(gateway) > 0:
        time.sleep(0.2)
    assert _running(gateway) == 0  # the engine stopped generating for the client that left
    assert trajectory(gateway, sid)["segments"] == []
    reply = session_client(gateway, sid).chat.completions.create(
        model=tiny_model_dir, messages=[{"role": "user", "content": "Go on and on."}], max_tokens=4
    )
    assert reply.choices[0].finish_reason in {"length", "stop"}
    traj = trajectory(gateway, sid)
    assert traj["forks"] == 0 and len(traj["segments"][0]["turns"]) == 1


def _running(gateway) -> float:
    """Requests the replicas are generating right now."""
    total = 0.0
    for url in gateway.replica_urls():
        text = httpx.get(f"{url}/metrics", timeout=30).text
        total += sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running")
        )
    return total


def test_openai_completions(gateway, tiny_model_dir, tokenizer):
    client = session_client(gateway, "openai-completions")
    first = client.completions.create(model=tiny_model_dir, prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert first.usage.completion_tokens == 8
    streamed = client.completions.create(model=tiny_model_dir, prompt="import os", max_tokens=8, stream=True)
    text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    assert isinstance(text, str) and text
    traj = trajectory(gateway, "openai-completions")
    assert sum(len(s["turns"]) for s in traj["segments"]) == 2
    assert tokenizer.decode(sampled_runs(traj["segments"][0])[0]) == first.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_chat_with_tools_and_completions(gateway, tiny_model_dir, stream):
    sid = f"litellm-{stream}"
    kwargs = dict(
        model=f"openai/{tiny_model_dir}",
        api_base=f"{gateway.url}/sessions/{sid}/v1",
        api_key="unused",
        timeout=120,
        max_tokens=200,
        extra_body=FORCE,
    )
    messages = [{"role": "user", "content": "List files."}]
    if stream:
        chunks = list(litellm.completion(messages=messages, tools=TOOLS, stream=True, **kwargs))
        response = litellm.stream_chunk_builder(chunks, messages=messages)
    else:
        response = litellm.completion(messages=messages, tools=TOOLS, **kwargs)
    call = response.choices[0].message.tool_calls[0]
    assert call.function.name == "shell" and json.loads(call.function.arguments)["all"] is True
    assert trajectory(gateway, sid)["forks"] == 0
    text_kwargs = {
        **kwargs,
        "api_base": f"{gateway.url}/sessions/{sid}-text/v1",
        "max_tokens": 4,
        "extra_body": {"ignore_eos": True},
    }  # the random model may sample an end-of-text within 4 tokens
    text = litellm.text_completion(prompt="x = 1", **text_kwargs)
    assert text.usage.completion_tokens == 4
    assert len(trajectory(gateway, f"{sid}-text")["segments"][0]["turns"]) == 1


def test_64_concurrent_sessions_are_recorded_token_exactly(gateway, tiny_model_dir, tokenizer, plain_bias):
    turns = 5

    async def episode(client: openai.AsyncOpenAI, i: int) -> list[tuple[str, list[int]]]:
        messages = [{"role": "user", "content": f"episode {i} starts"}]
        received = []
        for t in range(turns):
            reply = await client.chat.completions.create(
                model=tiny_model_dir,
                messages=messages,
                max_tokens=12,
                extra_body={
                    "return_token_ids": True,
                    "logit_bias": plain_bias,  # plain ASCII text, no markup: the text is content only
                    "chat_template_kwargs": {"enable_thinking": False},  # everything sampled is content
                },
            )
            choice = reply.choices[0]
            received.append((choice.message.content or "", choice.model_extra["token_ids"]))
            messages += [
                {"role": "assistant", "content": choice.message.content},
                {"role": "user", "content": f"episode {i} turn {t} ok"},
            ]
        return received

    async def run_all():
        clients = [
            openai.AsyncOpenAI(base_url=f"{gateway.url}/sessions/load-{i}/v1", api_key="x", timeout=300, max_retries=0)
            for i in range(64)
        ]
        return await asyncio.gather(*(episode(c, i) for i, c in enumerate(clients)))

    results = asyncio.run(run_all())
    replicas = Counter()
    for i, received in enumerate(results):
        traj = trajectory(gateway, f"load-{i}")
        replicas[traj["replica"]] += 1
        assert traj["forks"] == 0
        (segment,) = traj["segments"]
        assert len(segment["turns"]) == turns  # no turn lost
        text = tokenizer.decode(segment["token_ids"])
        assert f"episode {i} starts" in text and f"episode {i} turn {turns - 2} ok" in text  # not mixed up
        assert not re.search(rf"episode (?!{i}\b)\d+ ", text)
        runs = sampled_runs(segment)
        assert [ids for _, ids in received] == runs  # mask is 1 exactly on the sampled tokens, turn by turn
        for content, ids in received:
            assert tokenizer.decode(ids, skip_special_tokens=True) == content
        assert [lp is not None for lp in segment["logprobs"]] == [bool(m) for m in segment["mask"]]
    assert len(replicas) == 2 and max(replicas.values()) / min(replicas.values()) <= 1.5, replicas


def test_a_turn_that_samples_only_the_stop_token_has_empty_content(gateway, tiny_model_dir, tokenizer):
    """Regression (seen once in 320 sampled turns): a reply whose only token is `<|im_end|>` came back with the
    text `<|im_end|>` as its content."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    client = session_client(gateway, "stop-only")
    messages = [{"role": "user", "content": "Say nothing."}]
    for _ in range(2):  # the first turn and a delta-rendered one
        reply = client.chat.completions.create(
            model=tiny_model_dir, messages=messages, max_tokens=8,
            extra_body={"logit_bias": {str(end): 100}, "return_token_ids": True},
        )  # fmt: skip
        choice = reply.choices[0]
        assert choice.model_extra["token_ids"] == [end] and choice.finish_reason == "stop"
        assert (choice.message.content or "") == ""
        messages += [{"role": "assistant", "content": ""}, {"role": "user", "content": "Again."}]
    (segment,) = trajectory(gateway, "stop-only")["segments"]
    assert [ids for ids in sampled_runs(segment)] == [[end], [end]]  # the stop token stays in the recording


def test_stop_strings_still_end_a_recorded_turn(gateway, tiny_model_dir, tokenizer, plain_bias):
    """The gateway asks the replica not to detokenize, except when the request has stop strings: those are matched
    on the text, so they must keep working (the reply ends before the string, finish_reason "stop")."""
    messages = [{"role": "user", "content": "Write a long story."}]
    settings = {
        "model": tiny_model_dir, "messages": messages, "max_tokens": 48, "temperature": 1.0, "seed": 1234,
        "extra_body": {"logit_bias": plain_bias, "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}},
    }  # fmt: skip
    free = session_client(gateway, "no-stop").chat.completions.create(**settings)
    text = free.choices[0].message.content
    pieces = [text[k : k + 3] for k in range(len(text) // 3, len(text) - 3)]
    unique = [p for p in pieces if p.strip() and text.count(p) == 1]
    assert unique, f"the seeded reply has no piece of text to stop on: {text!r}"
    stop = unique[0]
    stopped = session_client(gateway, "with-stop").chat.completions.create(**settings, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    (segment,) = trajectory(gateway, "with-stop")["segments"]
    sampled = sampled_runs(segment)[0]
    assert stop not in tokenizer.decode(sampled[:-1]) and len(sampled) < len(
        sampled_runs(trajectory(gateway, "no-stop")["segments"][0])[0]
    )


def test_cut_at_stop_string():
    assert cut_at_stop_string("abc STOP def END", {"stop": ["END", "STOP"]}) == "abc "
    assert cut_at_stop_string("abc STOP def", {"stop": "STOP", "include_stop_str_in_output": True}) == "abc STOP"
    assert cut_at_stop_string("abc", {"stop": ["x"]}) == "abc" == cut_at_stop_string("abc", {})


def _forced_episode(gateway, tiny_model_dir, sid: str, tool_results: list[str]) -> list[dict]:
    client = session_client(gateway, sid)
    messages = [{"role": "system", "content": "You are a careful agent."}, {"role": "user", "content": "Fix it."}]
    for result in tool_results:
        reply = client.chat.completions.create(
            model=tiny_model_dir, messages=messages, tools=TOOLS, max_tokens=200, extra_body=FORCE
        )
        message = reply.choices[0].message
        assert message.tool_calls, message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return messages


def test_append_only_conversation_has_no_forks_where_rerendering_drifts(gateway, tiny_model_dir, tokenizer):
    results = ['{"passed": true, "failed": false}', '{"exit_code": 0, "ok": true}', "tests: 3 passed"]
    messages = _forced_episode(gateway, tiny_model_dir, "append-only", results)
    client = session_client(gateway, "append-only")
    messages.append({"role": "user", "content": "Now explain."})
    client.chat.completions.create(model=tiny_model_dir, messages=messages, max_tokens=8)
    traj = trajectory(gateway, "append-only")
    assert traj["forks"] == 0 and len(traj["segments"]) == 1
    recorded = traj["segments"][0]["token_ids"]
    # What a re-render of the same history gives: reasoning dropped, tool calls re-serialised.
    rerendered = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, return_dict=False)
    assert recorded[: len(rerendered)] != rerendered
    assert "List the files first." in tokenizer.decode(recorded)
    assert "List the files first." not in tokenizer.decode(rerendered)


def test_editing_an_earlier_message_starts_a_new_segment(gateway, tiny_model_dir):
    messages = _forced_episode(gateway, tiny_model_dir, "edited", ["out-1", "out-2"])
    before = trajectory(gateway, "edited")
    messages[1] = {"role": "user", "content": "Fix it, but differently."}  # the agent rewrites history
    session_client(gateway, "edited").chat.completions.create(model=tiny_model_dir, messages=messages, max_tokens=8)
    after = trajectory(gateway, "edited")
    assert after["forks"] == 1 and len(after["segments"]) == 2
    assert after["segments"][0] == before["segments"][0]  # the old segment is intact
    assert len(after["segments"][1]["turns"]) == 1


def _engine_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


def test_all_turns_of_a_session_hit_one_replica(gateway, tiny_model_dir):
    urls = gateway.replica_urls()
    before = [_engine_requests(u) for u in urls]
    client = session_client(gateway, "sticky")
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(5):
        reply = client.chat.completions.create(model=tiny_model_dir, messages=messages, max_tokens=4)
        messages += [
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": "go"},
        ]
    after = [_engine_requests(u) for u in urls]
    assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 5]


def test_errors_are_openai_style_and_the_server_keeps_serving(gateway, tiny_model_dir):
    url = gateway.url
    post = lambda path, **kw: httpx.post(f"{url}{path}", timeout=60, **kw)  # noqa: E731
    chat = "/sessions/errors/v1/chat/completions"
    cases = {
        "unknown session": (httpx.get(f"{url}/sessions/nope/trajectory", headers=AUTH, timeout=30), 404),
        "invalid JSON": (post(chat, content=b"{not json"), 400),
        "not an object": (post(chat, json=[1, 2]), 400),
        "wrong types": (post(chat, json={"model": tiny_model_dir, "messages": "hi"}), 400),
        "n > 1": (post(chat, json={"model": tiny_model_dir, "messages": [], "n": 2}), 400),
        "bad session id": (post("/sessions/a%20b/v1/chat/completions", json={}), 400),
        "unknown model": (post(chat, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "code"}, name
    too_long = post(chat, json={"model": tiny_model_dir, "messages": [{"role": "user", "content": "word " * 6000}]})
    assert too_long.status_code == 400
    assert re.search(r"4096", too_long.json()["error"]["message"]) and re.search(r"\d{4,}", too_long.text)
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    reply = session_client(gateway, "after-errors").chat.completions.create(
        model=tiny_model_dir, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
    )
    assert reply.choices[0].finish_reason in {"length", "stop"}


def test_control_endpoints_need_the_token(gateway):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for method, path in [
            ("GET", "/sessions/sticky/trajectory"),
            ("DELETE", "/sessions/sticky"),
            ("GET", "/sessions"),
        ]:
            response = httpx.request(method, f"{gateway.url}{path}", headers=headers, timeout=30)
            assert response.status_code == 401, (method, path, headers)
    assert httpx.get(f"{gateway.url}/sessions/sticky/trajectory", headers=AUTH, timeout=30).status_code == 200


def test_a_deleted_session_stays_closed(gateway, tiny_model_dir):
    """An agent that outlives its episode (the trainer read and deleted its session) gets a 410 naming the session,
    not a fresh session nobody reads; the gateway serves other sessions as before."""
    assert httpx.delete(f"{gateway.url}/sessions/sticky", headers=AUTH, timeout=30).status_code == 200
    late = session_client(gateway, "sticky")
    with pytest.raises(openai.APIStatusError) as refused:
        late.chat.completions.create(model=tiny_model_dir, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert refused.value.status_code == 410 and "'sticky' is closed" in refused.value.message
    for method in ("GET", "DELETE"):
        path = "/sessions/sticky/trajectory" if method == "GET" else "/sessions/sticky"
        response = httpx.request(method, f"{gateway.url}{path}", headers=AUTH, timeout=30)
        assert response.status_code == 410 and response.json()["error"]["type"] == "SessionClosedError"
    assert "sticky" not in {
        s["session_id"] for s in httpx.get(f"{gateway.url}/sessions", headers=AUTH).json()["sessions"]
    }
    fresh = session_client(gateway, "sticky-2").chat.completions.create(
        model=tiny_model_dir, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert fresh.choices[0].message is not None


def test_metrics_count_turns_tokens_and_replicas(gateway):
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["trl_agents_turns_total"] >= 64 * 5
    assert values['trl_agents_tokens_total{origin="sampled"}'] > 0
    assert values['trl_agents_forks_total{reason="history_edited"}'] >= 1
    assert values['trl_agents_replica_healthy{replica="replica-0"}'] == 1


def test_unrecorded_v1_routes(gateway, tiny_model_dir):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", timeout=120, max_retries=0)
    assert client.models.list().data[0].id == tiny_model_dir
    chunks = list(
        client.chat.completions.create(
            model=tiny_model_dir, messages=[{"role": "user", "content": "x"}], max_tokens=4, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in {"length", "stop"}
    listed = httpx.get(f"{gateway.url}/sessions", headers=AUTH, timeout=30).json()["sessions"]
    assert all(not s["session_id"].startswith("chatcmpl") for s in listed)


def test_idle_keep_alive_connections_stay_open(gateway):
    """Agents leave pooled connections idle while their tools run; the gateway must not close them under the client
    after a few seconds (a request sent as the server closes fails with a reset: seen at 256 sessions)."""
    import socket

    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        time.sleep(7)  # longer than uvicorn's default keep-alive (5 s)
        sock.setblocking(False)
        try:
            closed = sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            closed = False  # nothing to read and not closed: still open
    assert not closed
