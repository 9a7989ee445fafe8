"""`trl vllm-serve-async`: start N vLLM replicas, wait until all are healthy, serve the gateway in front.

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

Not here: what the gateway does (`gateway.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from .process import RenderServer, ReplicaError, ServerProcess, VLLMReplica, cpu_defaults, is_cpu_build


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl vllm-serve-async",
        description=(
            "Serve a model with N replicas of vLLM's own OpenAI server behind a gateway that gives each agent "
            "episode a session URL (/sessions/{sid}/v1), records the exact tokens the engine saw and sampled, "
            "and fans weight updates out to every replica. Flags not listed here are passed to every replica's "
            "`vllm serve` unchanged."
        ),
    )
    parser.add_argument("--model", required=True, help="model path or name served by every replica")
    parser.add_argument("--data-parallel-size", type=int, default=1, help="number of replicas (one per GPU)")
    parser.add_argument("--host", default="127.0.0.1", help="gateway interface (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="gateway port")
    parser.add_argument("--api-token", default=None, help="bearer token required by control endpoints")
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds to wait for every replica to become healthy"
    )
    parser.add_argument("--log-dir", default=None, help="folder for replica logs (default: a new temporary folder)")
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
        "--render-servers",
        type=int,
        default=None,
        help="vLLM render servers for rendering and parsing (default: one per replica; 0: use the replicas)",
    )
    return parser


CPU_REPLICA_NICENESS = 19
KEEP_ALIVE_SECONDS = 600


def replica_plan(args: argparse.Namespace, vllm_args: list[str], cpu: bool) -> list[dict]:
    """Name, flags, environment and niceness of each replica."""
    flags = list(vllm_args)
    if "--enable-scale-out" not in flags:
        flags.append("--enable-scale-out")
    if not any(f.split("=", 1)[0] == "--weight-transfer-config" for f in flags):
        # weight sync (weight_sync.py): NCCL on GPUs, this project's shared-memory backend on the CPU build
        flags += ["--weight-transfer-config", json.dumps({"backend": "trl_agents_shm" if cpu else "nccl"})]
    if cpu:
        flags += cpu_defaults(flags)
    plans = []
    cores = os.cpu_count() or 1
    tp = _tensor_parallel_size(vllm_args)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(args.data_parallel_size * tp)]
    for i in range(args.data_parallel_size):
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"} if "--enable-lora" in flags else {}
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


def main(argv: list[str]) -> int:
    import uvicorn

    from .gateway import GatewayConfig, create_app
    from .weight_sync import SyncConfig

    args, vllm_args = make_parser().parse_known_args(argv)
    if args.data_parallel_size < 1:
        raise SystemExit("trl vllm-serve-async: --data-parallel-size must be at least 1")
    if args.render_servers is not None and args.render_servers < 0:
        raise SystemExit("trl vllm-serve-async: --render-servers must be 0 or more")
    if args.weight_sync_timeout <= 0:
        raise SystemExit("trl vllm-serve-async: --weight-sync-timeout must be positive")
    if not 0 < args.port < 65536:
        raise SystemExit(f"trl vllm-serve-async: --port {args.port} is not a valid port")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="trl-agents-replicas-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    plans = replica_plan(args, vllm_args, is_cpu_build())
    replicas = [VLLMReplica(args.model, log_path=log_dir / f"{plan['name']}.log", **plan) for plan in plans]
    n_render = args.data_parallel_size if args.render_servers is None else args.render_servers
    renderers = [
        RenderServer(args.model, name=f"render-{i}", args=plans[0]["args"], log_path=log_dir / f"render-{i}.log")
        for i in range(n_render)
    ]

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt  # same clean-up path as Ctrl-C

    signal.signal(signal.SIGTERM, on_sigterm)
    # Bind the gateway's port first: it fails fast if taken, and no replica's own ports can take it meanwhile.
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as exc:
        listener.close()
        raise SystemExit(f"trl vllm-serve-async: cannot listen on {args.host}:{args.port}: {exc}") from exc
    try:
        start_replicas([*replicas, *renderers], args.startup_timeout)
        config = GatewayConfig(
            replicas=[(r.name, r.url) for r in replicas],
            render_urls=[r.url for r in renderers],
            api_token=args.api_token,
            sync=SyncConfig.from_total(args.weight_sync_timeout),
            journal_dir=args.journal_dir,
        )
        print(
            f"[vllm-serve-async] gateway on http://{args.host}:{args.port} (sessions: /sessions/{{sid}}/v1)",
            flush=True,
        )
        logging.basicConfig(level=logging.INFO)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config),
                host=args.host,
                port=args.port,
                log_level="warning",
                timeout_graceful_shutdown=5,
                # Agents keep pooled connections idle while their tools run. uvicorn's default (5 s) closes them
                # under the client, and a request sent as it closes fails with a reset (make reliability found it
                # with 256 sessions): keep idle connections longer than any tool call.
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
        )
        server.run(sockets=[listener])
    except ReplicaError as exc:
        print(f"[vllm-serve-async] {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0  # stopping is what was asked for; the replicas are stopped below
    finally:
        listener.close()
        print("[vllm-serve-async] stopping replicas", flush=True)
        for server in [*replicas, *renderers]:
            server.stop()
    return 0
