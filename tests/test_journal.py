"""Recorded trajectories survive a gateway restart: SIGTERM stops the launcher and every process it started, then
`trl vllm-serve-async --journal-dir` reloads every session, and an episode goes on recording after the restart as if
nothing happened. (The SIGTERM half is `trl vllm-serve-async`'s clean shutdown, tested here so that it costs no
gateway start of its own.)"""

from __future__ import annotations

import os
import signal

import openai
import psutil
import pytest

from trl.agents import ServerClient
from trl.agents.client import ServerError
from trl.agents.testing.servers import API_TOKEN, serve_async


def turn(server, sid: str, messages: list[dict], model: str) -> dict:
    client = openai.OpenAI(base_url=f"{server.url}/sessions/{sid}/v1", api_key="-", timeout=60, max_retries=0)
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=1.0)
    return {"role": "assistant", "content": reply.choices[0].message.content or ""}


def stop_with_sigterm(server) -> None:
    """SIGTERM to the launcher alone, as a job scheduler or a terminal sends it: every child goes with it."""
    launcher = psutil.Process(server.process.pid)
    family = [launcher, *launcher.children(recursive=True)]
    assert len(family) >= 3  # launcher, the replica's API server, its engine core at least
    os.kill(launcher.pid, signal.SIGTERM)
    server.process.wait(60)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive
    assert "stopping replicas" in server.log_path.read_text()


def test_sigterm_stops_every_child_and_trajectories_survive_the_restart(tiny_model_dir, tmp_path):
    journal = tmp_path / "journal"
    for logs in ("logs-1", "logs-2"):
        (tmp_path / logs).mkdir()
    conversations = {f"ep-{i}": [{"role": "user", "content": f"task {i}"}] for i in range(4)}
    # one replica each time: the restart is what is tested (re-adoption on a replica: test_sessions.py), and each
    # start of a 2-replica gateway costs four vLLM processes on 2 cores
    with serve_async(tiny_model_dir, tmp_path / "logs-1", "--journal-dir", str(journal), replicas=1) as server:
        for sid, messages in conversations.items():
            for k in range(2):
                messages.append(turn(server, sid, messages, tiny_model_dir))
                messages.append({"role": "user", "content": f"more {k}"})
        with ServerClient(server.url, api_token=API_TOKEN) as client:
            before = {sid: client.trajectory(sid) for sid in conversations}
            client.close_session("ep-3")  # deleted before the restart: stays deleted
        stop_with_sigterm(server)
    with serve_async(tiny_model_dir, tmp_path / "logs-2", "--journal-dir", str(journal), replicas=1) as server:
        with ServerClient(server.url, api_token=API_TOKEN) as client:
            after = {sid: client.trajectory(sid) for sid in ("ep-0", "ep-1", "ep-2")}
            assert after == {sid: before[sid] for sid in after}  # token for token, turns and versions included
            listed = {s["session_id"] for s in client.sessions()}
            assert listed == {"ep-0", "ep-1", "ep-2"}
            with pytest.raises(ServerError) as closed:  # a late call of the deleted episode is refused, not recorded
                client.trajectory("ep-3")
            assert closed.value.status == 410
            messages = conversations["ep-0"]
            messages.append(turn(server, "ep-0", messages, tiny_model_dir))  # the episode goes on
            grown = client.trajectory("ep-0")
        old = before["ep-0"]["segments"][0]
        new = grown["segments"][0]
        assert grown["forks"] == 0 and len(grown["segments"]) == 1
        assert new["token_ids"][: len(old["token_ids"])] == old["token_ids"] and len(new["turns"]) == 3
