"""`trl vllm-serve-async`: start N vLLM replicas, wait until all are healthy, serve the gateway in front.

Not here: the gateway's routes and recording (`gateway.py`), the replica process itself (`replica.py`).
"""

from __future__ import annotations

import argparse


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
    return parser


def main(argv: list[str]) -> int:
    args, vllm_args = make_parser().parse_known_args(argv)
    raise SystemExit("trl vllm-serve-async: the gateway is not built yet (issue 3)")
