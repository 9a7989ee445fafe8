"""`trl vllm-serve-async`: start N vLLM replicas, attach remote ones, wait until all are healthy, serve the gateway.

Each replica is vLLM's own OpenAI server (`process.py`) on its own port of 127.0.0.1, with the flags the gateway
needs (`--enable-scale-out` for render/generate/derender; `VLLM_SERVER_DEV_MODE=1` for pause and weight transfer)
plus every flag of the command line this module does not know, passed through unchanged. On GPUs replica i gets
the i-th group of `--tensor-parallel-size` devices; on the CPU build replica i is bound to core i (vLLM's automatic
binding would put every replica on the same core) and runs at the lowest priority (`nice +19`, given to its scheduling
group too: see `process._child_setup`) below the gateway and the render servers, whose short calls would otherwise
wait for CPU slices behind engines that compute flat out and busy-poll between steps (vLLM's shared-memory queue
spins for a second after each read); the engines still get every idle cycle. Measured on 2 cores: with equal shares
a render call at a turn boundary waited 168 ms on average, with the engines at +19 it waits 23 ms. Beside the
replicas run vLLM render servers (`vllm launch render`, no engine; one per replica by default) with the same flags:
the gateway renders and parses there, so those short calls never queue behind a replica's busy event loop, and
bursts of turn boundaries are split between them.
Ctrl-C or SIGTERM stops every child process.

`--replica URL` attaches vLLM servers already running on other nodes (`remote-0`, ...), beside or instead of the local
ones; the gateway treats them exactly like local replicas, once each has passed the start-up checks of `remote.py`
(exit code 2 otherwise). `--print-replica-command` prints the command such a node runs: the same flags as the local
replicas (`replica_flags` builds them for both).

Not here: what the gateway does (`gateway.py`), what a remote replica must have (`remote.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .process import RenderServer, ReplicaError, ServerProcess, VLLMReplica, cpu_defaults, is_cpu_build
from .remote import ReplicaCheckError, check_replicas, local_vllm_version


if TYPE_CHECKING:
    from .gateway import GatewayConfig


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl vllm-serve-async",
        description=(
            "Serve a model with N replicas of vLLM's own OpenAI server behind a gateway that gives each agent "
            "episode a session URL (/sessions/{sid}/v1), records the exact tokens the engine saw and sampled, "
            "and fans weight updates out to every replica. Flags not listed here are passed to every local replica's "
            "`vllm serve` unchanged (remote ones, --replica, get them from --print-replica-command)."
        ),
    )
    _add_replica_flags(parser)
    _add_gateway_flags(parser)
    _add_service_flags(parser)
    return parser


def _add_replica_flags(parser: argparse.ArgumentParser) -> None:
    """What to serve and where: the model, local and remote replicas."""
    parser.add_argument("--model", required=True, help="model path or name served by every replica")
    parser.add_argument(
        "--data-parallel-size",
        type=int,
        default=None,
        help="replicas started on this host, one per GPU (default: 1, or 0 with --replica)",
    )
    parser.add_argument(
        "--replica",
        action="append",
        default=[],
        metavar="URL",
        help="a vLLM server already running elsewhere (e.g. http://node7:8001, started with the command "
        "--print-replica-command prints) to serve beside or instead of the local replicas; repeatable. Named "
        "remote-0, remote-1, ...; checked at start (same vLLM version and --model, dev-mode and --enable-scale-out "
        "routes, same weight-transfer backend, LoRA when --enable-lora is given): the command exits with code 2 "
        "and names what a replica lacks",
    )
    parser.add_argument(
        "--print-replica-command",
        action="store_true",
        help="print the command that starts a replica for --replica on another node (this command's --model and "
        "vllm serve flags, as the local replicas get them) and exit without starting anything",
    )


def _add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    """The gateway's address and token, and how the replicas start (deadline, logs)."""
    parser.add_argument("--host", default="127.0.0.1", help="gateway interface (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="gateway port")
    parser.add_argument("--api-token", default=None, help="bearer token required by control endpoints")
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds to wait for every replica to become healthy"
    )
    parser.add_argument("--log-dir", default=None, help="folder for replica logs (default: a new temporary folder)")


def _add_service_flags(parser: argparse.ArgumentParser) -> None:
    """Weight syncs, the session journal and the render servers."""
    parser.add_argument(
        "--weight-sync-timeout",
        type=float,
        default=120.0,
        help="deadline of a whole weight sync in seconds (each call to a replica gets half of it)",
    )
    parser.add_argument(
        "--journal-dir",
        default=None,
        help="journal every session here as it is recorded (append-only JSONL) and reload them at start, so "
        "trajectories survive a restart (default: in memory only)",
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=STREAM_INTERVAL,
        help="tokens per chunk of a streamed turn after its first one (vLLM's stream_interval; the first token is "
        f"sent at once): fewer, larger chunks cost the replicas, gateway and render servers less (default: "
        f"{STREAM_INTERVAL}; 1: every token as it is sampled)",
    )
    parser.add_argument(
        "--render-servers",
        type=int,
        default=None,
        help="vLLM render servers on this host for rendering and parsing (default: one per local replica, 1 with "
        "no local replica; they need the model's tokenizer files here; 0: render on the replicas themselves)",
    )


# Tokens per streamed chunk after the first (`--stream-interval`). Agents read whole turns, not a token at a time, and
# each chunk costs the replica, the gateway and the render server a round of work: on the CPU build, streaming through
# the gateway reached 0.6 of direct streaming's tokens/s at 1 and 0.92-0.95 at 8 (benchmarks/RESULTS.md section 7).
STREAM_INTERVAL = 8
CPU_REPLICA_NICENESS = 19
KEEP_ALIVE_SECONDS = 600


def replica_flags(vllm_args: list[str], cpu: bool) -> list[str]:
    """The `vllm serve` flags of every replica (local, remote and render servers): `vllm_args` and what the gateway
    needs. The one place they are built, so `--print-replica-command` prints what local replicas get."""
    flags = list(vllm_args)
    if "--enable-scale-out" not in flags:
        flags.append("--enable-scale-out")
    if not any(f.split("=", 1)[0].split(".", 1)[0] == "--weight-transfer-config" for f in flags):
        # weight sync (weight_sync.py): NCCL on GPUs, this project's shared-memory backend on the CPU build
        flags += ["--weight-transfer-config", json.dumps({"backend": "trl_agents_shm" if cpu else "nccl"})]
    if cpu:
        flags += cpu_defaults(flags)
    return flags


def replica_env(flags: list[str]) -> dict[str, str]:
    """Environment every replica needs beside `VLLM_SERVER_DEV_MODE=1` (which `ServerProcess` sets)."""
    return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"} if "--enable-lora" in flags else {}


def weight_transfer_backend(flags: list[str]) -> str:
    """The weight-transfer backend `flags` select, read as vLLM reads them: `--weight-transfer-config JSON` (the last
    one wins), overridden by `--weight-transfer-config.backend NAME` wherever it is (vLLM's parser appends dotted
    flags after the others); vLLM's default, `nccl`, when neither is given."""
    configured, dotted = {}, None
    for i, flag in enumerate(flags):
        name, has_value, value = flag.partition("=")
        if name not in ("--weight-transfer-config", "--weight-transfer-config.backend"):
            continue
        value = value if has_value else (flags[i + 1] if i + 1 < len(flags) else "")
        if name.endswith(".backend"):
            dotted = value.strip('"')  # vLLM accepts it bare or JSON-quoted
            continue
        try:
            configured = json.loads(value)
        except ValueError as exc:
            raise SystemExit(f"trl vllm-serve-async: --weight-transfer-config {value!r} is not JSON: {exc}") from exc
        if not isinstance(configured, dict):
            raise SystemExit(f"trl vllm-serve-async: --weight-transfer-config {value!r} is not a JSON object")
    return dotted or configured.get("backend", "nccl")


def replica_plan(args: argparse.Namespace, vllm_args: list[str], cpu: bool) -> list[dict]:
    """Name, flags, environment and niceness of each local replica."""
    flags = replica_flags(vllm_args, cpu)
    plans = []
    cores = os.cpu_count() or 1
    tp = _tensor_parallel_size(vllm_args)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(args.data_parallel_size * tp)]
    for i in range(args.data_parallel_size):
        env = replica_env(flags)
        if cpu:
            if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                env["VLLM_CPU_OMP_THREADS_BIND"] = str(i % cores)
        else:
            group = devices[i * tp : (i + 1) * tp]
            if len(group) < tp:
                raise SystemExit(
                    f"trl vllm-serve-async: {args.data_parallel_size} replicas x tensor parallel {tp} need "
                    f"{args.data_parallel_size * tp} GPUs, but only {len(devices)} are visible ({devices})"
                )
            env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
        niceness = CPU_REPLICA_NICENESS if cpu else 0
        plans.append({"name": f"replica-{i}", "args": flags, "env": env, "niceness": niceness})
    return plans


REMOTE_PORT = 8001  # the port in the printed replica command


def replica_command(model: str, vllm_args: list[str], cpu: bool) -> list[str]:
    """The command (environment assignments first) that starts a replica for `--replica` on another node."""
    flags = replica_flags(vllm_args, cpu)
    env = [f"{k}={v}" for k, v in {"VLLM_SERVER_DEV_MODE": "1", **replica_env(flags)}.items()]
    # the CPU build's `vllm` console script does not work (process.py): the module form is the same server
    server = (
        ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", model] if cpu else ["vllm", "serve", model]
    )
    return [*env, *server, "--host", "0.0.0.0", "--port", str(REMOTE_PORT), *flags]


def replica_command_text(model: str, vllm_args: list[str], cpu: bool) -> str:
    """What `--print-replica-command` prints: comment lines, then the command, shell-quoted, on the last line."""
    notes = [
        f"# Run on each node that serves a replica, then add it here with --replica http://NODE:{REMOTE_PORT}.",
        f"# The node needs vLLM {local_vllm_version()} and the model as {model} (or serve it under that name with "
        "--served-model-name).",
    ]
    if cpu:
        notes.append(
            "# CPU build: its `vllm` console script does not work, so the module form of `vllm serve` is used."
        )
    if weight_transfer_backend(replica_flags(vllm_args, cpu)) == "trl_agents_shm":
        notes.append(
            "# trl_agents_shm moves weights through shared memory: the replica must run on the trainer's host, "
            "with trl-agents installed."
        )
    return "\n".join([*notes, shlex.join(replica_command(model, vllm_args, cpu))])


def _tensor_parallel_size(vllm_args: list[str]) -> int:
    for i, arg in enumerate(vllm_args):
        for flag in ("--tensor-parallel-size", "-tp"):
            if arg == flag and i + 1 < len(vllm_args):
                return int(vllm_args[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    return 1


def start_replicas(replicas: list[ServerProcess], timeout: float) -> None:
    """Start every replica and wait until all are healthy, printing progress; raise `ReplicaError` on failure."""
    for replica in replicas:
        replica.start()
        print(f"[vllm-serve-async] {replica.name}: starting on {replica.url} (log: {replica.log_path})", flush=True)
    start = time.monotonic()
    pending = list(replicas)
    last_report = 0.0
    while pending:
        for replica in list(pending):
            code = replica.poll()
            if code is not None:
                raise ReplicaError(
                    f"{replica.name} exited with code {code} while starting.\n"
                    f"Last lines of {replica.log_path}:\n{replica.log_tail()}"
                )
            if replica.is_healthy(timeout=1.0):
                pending.remove(replica)
                print(f"[vllm-serve-async] {replica.name}: healthy after {time.monotonic() - start:.0f} s", flush=True)
        elapsed = time.monotonic() - start
        if pending and elapsed > timeout:
            names = ", ".join(r.name for r in pending)
            tails = "\n".join(f"--- {r.name} ({r.log_path}):\n{r.log_tail()}" for r in pending)
            raise ReplicaError(f"{names} not healthy after {timeout:.0f} s.\n{tails}")
        if pending and elapsed - last_report >= 10:
            last_report = elapsed
            print(f"[vllm-serve-async] waiting for {', '.join(r.name for r in pending)} ({elapsed:.0f} s)", flush=True)
        time.sleep(0.5)


def local_replica_count(args: argparse.Namespace) -> int:
    """`--data-parallel-size`, or its default: 1 without `--replica`, 0 with it."""
    count = args.data_parallel_size
    if count is None:
        return 0 if args.replica else 1
    if count < 0:
        raise SystemExit("trl vllm-serve-async: --data-parallel-size must be 0 or more")
    if count == 0 and not args.replica:
        raise SystemExit("trl vllm-serve-async: nothing to serve: --data-parallel-size 0 needs at least one --replica")
    return count


def render_server_count(args: argparse.Namespace) -> int:
    """`--render-servers`, or its default: one per local replica, 1 when every replica is remote."""
    if args.render_servers is None:
        return max(1, args.data_parallel_size)
    if args.render_servers < 0:
        raise SystemExit("trl vllm-serve-async: --render-servers must be 0 or more")
    return args.render_servers


def remote_url(url: str) -> str:
    """`url` without a trailing slash; `SystemExit` unless it looks like `http://HOST:PORT`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SystemExit(f"trl vllm-serve-async: --replica {url!r} is not a URL like http://HOST:PORT")
    return url.rstrip("/")


def validate_args(args: argparse.Namespace) -> None:
    """Fill in the defaults that depend on other flags and refuse bad values (`SystemExit` naming the flag)."""
    args.data_parallel_size = local_replica_count(args)
    args.replica = [remote_url(url) for url in args.replica]
    args.render_servers = render_server_count(args)
    if args.stream_interval < 1:
        raise SystemExit("trl vllm-serve-async: --stream-interval must be 1 or more")
    if args.weight_sync_timeout <= 0:
        raise SystemExit("trl vllm-serve-async: --weight-sync-timeout must be positive")
    if not 0 < args.port < 65536:
        raise SystemExit(f"trl vllm-serve-async: --port {args.port} is not a valid port")


def check_remote_replicas(args: argparse.Namespace, backend: str, lora: bool) -> list[tuple[str, str]]:
    """Check every `--replica` (`ReplicaCheckError` names what any lacks), print each; their names and URLs."""
    remotes = check_replicas(args.replica, model=args.model, backend=backend, lora=lora)
    named = []
    for i, remote in enumerate(remotes):
        name = f"remote-{i}"
        workers = f"{remote.workers} worker{'s' if remote.workers != 1 else ''}"
        print(f"[vllm-serve-async] {name}: {remote.url} (vLLM {remote.version}, {workers})", flush=True)
        named.append((name, remote.url))
    return named


def local_servers(
    args: argparse.Namespace, vllm_args: list[str], cpu: bool
) -> tuple[list[VLLMReplica], list[RenderServer]]:
    """The local replicas and render servers, not started yet, each logging to its file in `--log-dir`."""
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="trl-agents-replicas-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    replicas = [
        VLLMReplica(args.model, log_path=log_dir / f"{plan['name']}.log", **plan)
        for plan in replica_plan(args, vllm_args, cpu)
    ]
    flags = replica_flags(vllm_args, cpu)
    renderers = [
        RenderServer(args.model, name=f"render-{i}", args=flags, log_path=log_dir / f"render-{i}.log")
        for i in range(args.render_servers)
    ]
    return replicas, renderers


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def bind_gateway_port(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound before any replica starts: it fails fast if the port is taken, and no
    replica's own ports can take it meanwhile."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise SystemExit(f"trl vllm-serve-async: cannot listen on {host}:{port}: {exc}") from exc
    return listener


def gateway_config(
    args: argparse.Namespace,
    replicas: list[VLLMReplica],
    renderers: list[RenderServer],
    remotes: list[tuple[str, str]],
    backend: str,
) -> GatewayConfig:
    """What the gateway serves: the local replicas (their URLs are known before they start), the remote ones (names
    and URLs) and the render servers. Built before anything starts, so a gateway that cannot load fails at once."""
    from .gateway import GatewayConfig
    from .weight_sync import SyncConfig

    return GatewayConfig(
        replicas=[(r.name, r.url) for r in replicas] + remotes,
        render_urls=[r.url for r in renderers],
        api_token=args.api_token,
        sync=SyncConfig.from_total(args.weight_sync_timeout),
        journal_dir=args.journal_dir,
        weight_transfer_backend=backend,  # trainers read it (GET /weights) to pick the same one
        stream_interval=args.stream_interval,
    )


def serve_gateway(config: GatewayConfig, listener: socket.socket, host: str, port: int) -> None:
    """Serve the gateway on `listener` (bound to `host`:`port`) until it stops."""
    import uvicorn

    from .gateway import create_app

    print(f"[vllm-serve-async] gateway on http://{host}:{port} (sessions: /sessions/{{sid}}/v1)", flush=True)
    logging.basicConfig(level=logging.INFO)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
            # Agents keep pooled connections idle while their tools run. uvicorn's default (5 s) closes them
            # under the client, and a request sent as it closes fails with a reset (make reliability found it
            # with 256 sessions): keep idle connections longer than any tool call.
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
    )
    server.run(sockets=[listener])


def run_servers(
    args: argparse.Namespace, listener: socket.socket, servers: list[ServerProcess], config: GatewayConfig
) -> int:
    """Start the local servers, serve the gateway until Ctrl-C or SIGTERM, stop every child; the exit code."""
    try:
        start_replicas(servers, args.startup_timeout)
        serve_gateway(config, listener, args.host, args.port)
    except ReplicaError as exc:
        print(f"[vllm-serve-async] {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0  # stopping is what was asked for; the replicas are stopped below
    finally:
        listener.close()
        print("[vllm-serve-async] stopping replicas", flush=True)
        for server in servers:
            server.stop()
    return 0


def main(argv: list[str]) -> int:
    """`trl vllm-serve-async ARGV`: parse, validate, check the remote replicas, start the local ones, serve."""
    args, vllm_args = make_parser().parse_known_args(argv)
    cpu = is_cpu_build()
    if args.print_replica_command:
        print(replica_command_text(args.model, vllm_args, cpu), flush=True)
        return 0
    validate_args(args)
    flags = replica_flags(vllm_args, cpu)
    backend = weight_transfer_backend(flags)
    try:  # before anything starts: a replica that cannot serve stops the command at once
        remotes = check_remote_replicas(args, backend, lora="--enable-lora" in flags)
    except ReplicaCheckError as exc:
        print(f"[vllm-serve-async] {exc}", file=sys.stderr, flush=True)
        return 2
    replicas, renderers = local_servers(args, vllm_args, cpu)
    config = gateway_config(args, replicas, renderers, remotes, backend)
    signal.signal(signal.SIGTERM, _interrupt)
    listener = bind_gateway_port(args.host, args.port)
    return run_servers(args, listener, [*replicas, *renderers], config)
