"""`trl vllm-serve-async` as a process: clear start-up failures, replica plans, child priorities. Its clean shutdown
(SIGTERM to the launcher leaves no orphan) is tested in test_journal.py, on the gateway that test restarts."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import psutil
import pytest

from trl.agents.server.launch import replica_plan
from trl.agents.server.process import ServerProcess, free_port


def test_a_replica_that_cannot_start_is_named_with_its_log(tmp_path):
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [sys.executable, "-m", "trl.agents.cli", "vllm-serve-async", "--model", str(missing),
         "--port", str(free_port()), "--log-dir", str(tmp_path), "--startup-timeout", "240"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    # the replica and its render server both fail on the missing model; whichever exits first is named
    assert re.search(r"(replica|render)-0 exited with code", result.stderr), result.stderr
    assert "Last lines of" in result.stderr and str(missing) in result.stderr


def plan(n: int, vllm_args: list[str], cpu: bool) -> list[dict]:
    return replica_plan(argparse.Namespace(data_parallel_size=n), vllm_args, cpu)


def test_cpu_replicas_get_their_own_core_and_cpu_defaults(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    plans = plan(2, ["--dtype", "float32"], cpu=True)
    assert [p["env"]["VLLM_CPU_OMP_THREADS_BIND"] for p in plans] == ["0", "1"]
    assert "--enable-scale-out" in plans[0]["args"] and "--gpu-memory-utilization" in plans[0]["args"]
    user_set = plan(1, ["--gpu-memory-utilization", "0.3"], cpu=True)[0]["args"]
    assert user_set.count("--gpu-memory-utilization") == 1


def test_gpu_replicas_get_tensor_parallel_groups(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,4,5")
    plans = plan(2, ["--tensor-parallel-size", "2"], cpu=False)
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in plans] == ["2,3", "4,5"]
    with pytest.raises(SystemExit, match="need 6 GPUs"):
        plan(3, ["-tp", "2"], cpu=False)


def test_upstream_connections_are_dropped_before_the_servers_drop_them():
    """vLLM's servers (uvicorn) close idle keep-alive connections after 5 s; a request the gateway sends on one as it
    closes fails with a reset (a 503 mid-`make demo`). The gateway's pools (its own client and the pass-through
    routes' aiohttp session) must let go first."""
    import asyncio
    import inspect

    import uvicorn

    from trl.agents.server.gateway import new_proxy_session
    from trl.agents.server.upstream import new_client

    async def keepalive() -> tuple[float, float]:
        session = new_proxy_session()
        try:
            return new_client().keepalive, session.connector._keepalive_timeout
        finally:
            await session.close()

    server_side = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    assert max(asyncio.run(keepalive())) < server_side


class Sleeper(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_lowered_priority_also_lowers_the_childs_scheduling_group(tmp_path):
    """The child runs in a new session; with autogroup scheduling (on here) that session is a group of its own that
    would get an equal CPU share whatever the niceness, so the niceness is given to the group too."""
    child = Sleeper("none", niceness=7, log_path=tmp_path / "sleeper.log")
    child.start()
    # 19 is the lowest priority: where this run already has a high niceness (`make test` without an autogroup of its
    # own, see conftest.py) the child's is capped there, and its group still goes from 0 to it
    expected = min(os.nice(0) + 7, 19)
    try:
        assert psutil.Process(child.process.pid).nice() == expected
        autogroup = f"/proc/{child.process.pid}/autogroup"
        if os.path.exists(autogroup):  # kernels built without autogroup scheduling have no such file
            assert open(autogroup).read().split()[-1] == str(expected)
    finally:
        child.stop()
