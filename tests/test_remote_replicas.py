"""`trl vllm-serve-async --replica URL`: a vLLM server started by hand, attached to the gateway beside a local replica,
serves sessions and weight syncs like the local one; servers that cannot serve behind the gateway are refused at start
with what they lack.

Real vLLM servers here (each about 40 s to start on 2 cores), in file order: one without dev mode or --enable-scale-out
(one test, stopped before the others start), then for the rest of the module the "remote" replica, started by hand
with the flags `--print-replica-command` prints, and the gateway with its own local replica and render server.
The remote replica runs on this host, on loopback: on the CPU build weights move through shared memory
(`trl_agents_shm`), which only works on the trainer's host. What makes it remote is that the gateway did not start it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.test_weight_sync import ATOL, CHANGED, PROMPTS, compare, perturb
from trl.agents import ServerClient
from trl.agents.server.launch import (
    local_replica_count,
    render_server_count,
    replica_command,
    replica_flags,
    replica_plan,
    weight_transfer_backend,
)
from trl.agents.server.process import ServeAsyncProcess, VLLMReplica, cpu_defaults, free_port
from trl.agents.server.remote import ROUTES, ReplicaCheckError, check_replica, local_vllm_version, probe_routes
from trl.agents.testing.servers import API_TOKEN, SERVE_ARGS


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
BACKEND = "trl_agents_shm"  # the CPU build's weight-transfer backend (launch.replica_flags)
FAST = 30  # seconds: a refusal at start must come well within this (Python and vLLM imports included)


def serve_async_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trl.agents.cli", "vllm-serve-async", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def split_replica_command(line: str) -> tuple[dict[str, str], str, list[str]]:
    """Environment, model and flags of a command `--print-replica-command` printed (CPU build form)."""
    tokens = shlex.split(line)
    env = {}
    while "=" in tokens[0] and not tokens[0].startswith("-"):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    head = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert tokens[:4] == head, tokens
    model, rest = tokens[4], tokens[5:]
    assert rest[:4] == ["--host", "0.0.0.0", "--port", "8001"], rest
    return env, model, rest[4:]


@pytest.fixture(scope="module")
def printed(tiny_model_dir) -> subprocess.CompletedProcess:
    return serve_async_command("--model", tiny_model_dir, *SERVE_ARGS, "--print-replica-command")


# -- fast: the printed command, flag defaults ---------------------------------------------------------------------


def test_print_replica_command_prints_the_local_replicas_flags_and_starts_nothing(tiny_model_dir, tmp_path):
    extra = ["--max-num-seqs", "7", "--reasoning-parser", "qwen3"]  # passthrough flags the gateway does not know
    start = time.monotonic()
    result = serve_async_command(
        "--model", tiny_model_dir, "--log-dir", str(tmp_path / "logs"), "--port", str(free_port()),
        *SERVE_ARGS, *extra, "--print-replica-command",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < FAST
    assert not (tmp_path / "logs").exists()  # nothing started: no log folder, no replica log
    *notes, line = result.stdout.strip().splitlines()
    assert all(note.startswith("# ") for note in notes) and any("module form" in note for note in notes)
    env, model, flags = split_replica_command(line)
    assert env == {"VLLM_SERVER_DEV_MODE": "1"} and model == tiny_model_dir
    local = replica_plan(argparse.Namespace(data_parallel_size=1), [*SERVE_ARGS, *extra], cpu=True)[0]["args"]
    assert flags == local  # exactly what a local replica gets
    assert " ".join(extra) in line and "--enable-scale-out" in flags and "--enforce-eager" in flags
    assert f"--weight-transfer-config '{json.dumps({'backend': BACKEND})}'" in line


def test_replica_command_on_gpus_is_vllm_serve_with_nccl_and_lora_updating():
    command = replica_command("Qwen/Qwen3-8B", ["--enable-lora", "--tensor-parallel-size", "2"], cpu=False)
    line = shlex.join(command)
    assert line.startswith(
        "VLLM_SERVER_DEV_MODE=1 VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 vllm serve Qwen/Qwen3-8B --host 0.0.0.0 --port 8001 "
        "--enable-lora --tensor-parallel-size 2 --enable-scale-out"
    ), line
    assert weight_transfer_backend(command) == "nccl" and "--gpu-memory-utilization" not in command


def test_weight_transfer_backend_reads_every_form_vllm_accepts():
    assert weight_transfer_backend(["--weight-transfer-config", '{"backend": "ipc"}']) == "ipc"
    assert weight_transfer_backend(['--weight-transfer-config={"backend": "ipc"}']) == "ipc"
    assert weight_transfer_backend(["--weight-transfer-config.backend", "ipc"]) == "ipc"
    assert weight_transfer_backend([]) == "nccl"  # vLLM's default
    # vLLM's parser appends dotted flags after the others: the dotted form wins wherever it is
    assert weight_transfer_backend(["--weight-transfer-config.backend=ipc", "--weight-transfer-config", "{}"]) == "ipc"
    dotted = replica_flags(["--weight-transfer-config.backend=ipc"], cpu=True)
    assert weight_transfer_backend(dotted) == "ipc" and "--weight-transfer-config" not in dotted


def test_local_replicas_default_to_none_beside_remote_ones():
    def ns(dp, replicas, render=None):
        return argparse.Namespace(data_parallel_size=dp, replica=replicas, render_servers=render)

    assert local_replica_count(ns(None, [])) == 1
    assert local_replica_count(ns(None, ["http://a:1"])) == 0
    assert local_replica_count(ns(2, ["http://a:1"])) == 2
    with pytest.raises(SystemExit, match="needs at least one --replica"):
        local_replica_count(ns(0, []))
    assert render_server_count(ns(0, ["http://a:1"])) == 1  # renders on this host even with no local replica
    assert render_server_count(ns(3, [])) == 3 and render_server_count(ns(0, ["http://a:1"], render=0)) == 0


# -- fast refusals ---------------------------------------------------------------------------------------------------


def test_an_unreachable_replica_stops_the_command_with_exit_code_2(tiny_model_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result = serve_async_command("--model", tiny_model_dir, "--replica", url, "--log-dir", str(tmp_path / "logs"))
    assert time.monotonic() - start < FAST
    assert result.returncode == 2, result.stderr
    assert f"cannot reach --replica {url}: GET /health: ConnectError" in result.stderr, result.stderr
    assert "Connection refused" in result.stderr
    assert not (tmp_path / "logs").exists()  # refused before any local replica or render server started


class OldVLLM(BaseHTTPRequestHandler):
    """Stands in for a vLLM 0.30.0 server, since another vLLM cannot be installed here: it answers `/health` and
    `/version` as vLLM does, and 404 on every other path (so `/openapi.json` too, as with --disable-fastapi-docs)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        answers = {"/health": b"", "/version": json.dumps({"version": "0.30.0"}).encode()}
        body = answers.get(self.path)
        status = 200 if body is not None else 404
        body = body if body is not None else json.dumps({"detail": "Not Found"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        return  # keep the test output clean


@pytest.fixture
def old_vllm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), OldVLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_another_vllm_version_is_refused_with_every_problem(old_vllm):
    ours = local_vllm_version()
    start = time.monotonic()
    with pytest.raises(ReplicaCheckError) as refused:
        check_replica(old_vllm, model="m", backend=BACKEND, timeout=5)
    assert time.monotonic() - start < 5
    message = str(refused.value)
    print(message)
    assert message.startswith(f"--replica {old_vllm} cannot serve behind this gateway:")
    assert f"runs vLLM 0.30.0 but the gateway runs vLLM {ours}: start it with vLLM {ours}" in message
    # not just the first problem: the rest are listed too (no /openapi.json, so every route was probed)
    assert "GET /v1/models answered 404: Not Found" in message
    assert "lacks VLLM_SERVER_DEV_MODE=1 in its environment (no /pause, /resume" in message
    assert "lacks --enable-scale-out (no /inference/v1/generate" in message


# -- a real vLLM server without dev mode or scale-out ------------------------------------------------------------------


@pytest.fixture
def plain_vllm(tiny_model_dir, tmp_path):
    """vLLM as a user starts it by default. `ServerProcess` sets VLLM_SERVER_DEV_MODE=1 unless told otherwise, and vLLM
    reads the variable as an integer (`bool(int(...))`), so "0" turns dev mode off."""
    args = [*SERVE_ARGS, *cpu_defaults(SERVE_ARGS)]
    env = {"VLLM_SERVER_DEV_MODE": "0"}
    with VLLMReplica(tiny_model_dir, args=args, env=env, log_path=tmp_path / "plain.log") as server:
        yield server


def test_a_server_without_dev_mode_or_scale_out_is_refused_naming_both(plain_vllm, tiny_model_dir, tmp_path):
    routes = set(httpx.get(f"{plain_vllm.url}/openapi.json", timeout=60).json()["paths"])
    assert "/v1/completions" in routes and "/pause" not in routes  # "0" is off
    with httpx.Client(base_url=plain_vllm.url, timeout=10) as client:  # probing agrees with /openapi.json
        assert probe_routes(client, ROUTES) == routes & set(ROUTES)
    start = time.monotonic()
    result = serve_async_command(
        "--model", tiny_model_dir, "--replica", plain_vllm.url, "--log-dir", str(tmp_path / "logs"), *SERVE_ARGS
    )
    assert time.monotonic() - start < FAST
    assert result.returncode == 2, result.stderr
    print(result.stderr)
    assert f"--replica {plain_vllm.url} cannot serve behind this gateway" in result.stderr
    assert "lacks VLLM_SERVER_DEV_MODE=1 in its environment (no /pause, /resume, /init_weight_transfer_engine" in (
        result.stderr
    )
    assert "lacks --enable-scale-out (no /inference/v1/generate, /v1/chat/completions/render" in result.stderr
    assert "runs vLLM" not in result.stderr and "serves [" not in result.stderr  # version and model are right
    assert not (tmp_path / "logs").exists()


# -- the remote replica and the gateway --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(printed, tiny_model_dir, tmp_path_factory):
    """A replica started by hand with the printed command's environment and flags (on loopback, not 0.0.0.0; bound to
    core 1, since the gateway binds its local replica to core 0; lowest priority, as local replicas run)."""
    env, model, flags = split_replica_command(printed.stdout.strip().splitlines()[-1])
    log = tmp_path_factory.mktemp("remote") / "remote.log"
    env["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    with VLLMReplica(model, args=flags, env=env, log_path=log, niceness=19, startup_timeout=300) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(remote, tiny_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("gateway")
    server = ServeAsyncProcess(
        tiny_model_dir,
        name="vllm-serve-async",
        args=["--data-parallel-size", "1", "--replica", remote.url, "--api-token", API_TOKEN,
              "--log-dir", str(logs), "--weight-sync-timeout", "60", *SERVE_ARGS],
        log_path=logs / "launcher.log",
        startup_timeout=400,
    )  # fmt: skip
    with server:
        yield server


def test_the_remote_replica_passes_the_checks(remote, tiny_model_dir):
    replica = check_replica(remote.url, model=tiny_model_dir, backend=BACKEND)
    assert (replica.url, replica.version, replica.workers, replica.backend) == (
        remote.url,
        local_vllm_version(),
        1,
        BACKEND,
    )
    with httpx.Client(base_url=remote.url, timeout=10) as client:  # what a server with --disable-fastapi-docs gets
        assert probe_routes(client, ROUTES) == set(ROUTES)


def test_another_model_backend_or_lora_is_refused_with_every_problem(remote, tiny_model_dir):
    with pytest.raises(ReplicaCheckError) as refused:
        check_replica(remote.url, model="Qwen/Qwen3-0.6B", backend="nccl", lora=True)
    message = str(refused.value)
    print(message)
    assert f"serves ['{tiny_model_dir}'], not Qwen/Qwen3-0.6B: start it with --model Qwen/Qwen3-0.6B" in message
    assert """lacks --weight-transfer-config '{"backend": "nccl"}' (its backend: trl_agents_shm)""" in message
    assert "lacks --enable-lora" in message
    assert "lacks VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 in its environment (no /v1/load_lora_adapter)" in message


def test_health_lists_the_local_and_the_remote_replica(gateway, remote):
    health = httpx.get(f"{gateway.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    replicas = {r["name"]: r for r in health.json()["replicas"]}
    assert set(replicas) == {"replica-0", "remote-0"}
    assert replicas["remote-0"]["url"] == remote.url and all(r["healthy"] for r in replicas.values())
    log = gateway.log_path.read_text()
    assert f"remote-0: {remote.url} (vLLM {local_vllm_version()}, 1 worker)" in log


def chat(gateway, sid: str, model: str, text: str, max_tokens: int = 8):
    client = openai.OpenAI(base_url=f"{gateway.url}/sessions/{sid}/v1", api_key="-", timeout=120, max_retries=0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=1.0, seed=7
    )


def test_sessions_land_on_both_replicas_and_are_recorded_token_exactly(gateway, tiny_model_dir):
    sids = [f"remote-test-{i}" for i in range(6)]
    for i, sid in enumerate(sids):
        reply = chat(gateway, sid, tiny_model_dir, f"Episode {i}: say something.")
        assert reply.usage.completion_tokens > 0
    listed = httpx.get(f"{gateway.url}/sessions", headers=AUTH, timeout=30).json()["sessions"]
    placed = Counter(s["replica"] for s in listed if s["session_id"] in sids)
    assert placed == {"replica-0": 3, "remote-0": 3}, placed
    for sid in sids:
        trajectory = httpx.get(f"{gateway.url}/sessions/{sid}/trajectory", headers=AUTH, timeout=30).json()
        (segment,) = trajectory["segments"]
        (turn,) = segment["turns"]
        start, end = turn["prompt_tokens"], turn["prompt_tokens"] + turn["completion_tokens"]
        assert end == len(segment["token_ids"]) and turn["completion_tokens"] > 0
        assert segment["mask"] == [0] * start + [1] * (end - start)  # 1 exactly on the sampled tokens
        assert [lp is not None for lp in segment["logprobs"]] == [bool(m) for m in segment["mask"]]


def test_a_weight_sync_reaches_the_remote_replica(gateway, tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    urls = gateway.replica_urls()
    assert len(urls) == 2

    def differences() -> dict[str, float]:
        return {
            url: max(compare(model, url, tiny_model_dir, tokenizer(p)["input_ids"]) for p in PROMPTS) for url in urls
        }

    perturb(model, seed=11)
    before = differences()
    assert all(d > CHANGED for d in before.values()), f"perturbation too small to detect a sync: {before}"
    with ServerClient(gateway.url, api_token=API_TOKEN, timeout=120) as client:
        version = client.update_weights(model)
        status = client.weight_status()
    assert version == 1 and status["failures"] == 0 and status["quarantined"] == {}
    assert status["backend"] == BACKEND  # the launcher tells trainers the replicas' backend
    after = differences()
    assert all(d <= ATOL for d in after.values()), f"a replica does not serve the trainer's weights: {after}"
    # new sessions on both replicas are recorded with the new version
    for i in range(2):
        chat(gateway, f"after-sync-{i}", tiny_model_dir, "hi", max_tokens=4)
    trajectories = [
        httpx.get(f"{gateway.url}/sessions/after-sync-{i}/trajectory", headers=AUTH, timeout=30).json()
        for i in range(2)
    ]
    assert {t["replica"] for t in trajectories} == {"replica-0", "remote-0"}
    assert all(t["segments"][0]["turns"][0]["policy_version"] == 1 for t in trajectories)
