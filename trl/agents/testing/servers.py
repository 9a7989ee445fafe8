"""Real servers on a tiny model for tests and benchmarks: `trl vllm-serve-async` with CPU replicas.

`serve_async(model_dir, logs, *extra)` returns a `ServeAsyncProcess` (a context manager: started on entry, stopped on
exit whatever happens) running the gateway over two CPU replicas with `SERVE_ARGS` and the control token
`API_TOKEN`. Build a model with `trl.agents.tiny_model.build`. Not here: the processes themselves (`server.process`).
"""

from __future__ import annotations

from pathlib import Path

from ..server.process import ServeAsyncProcess


# Flags every test server uses: float32 so engine logprobs can be compared with the trainer's; hermes tool parsing;
# a KV cache of 512 MiB (half a million tokens of the tiny model) instead of the CPU default's share of memory (15%,
# 3.5 GiB per replica, all of it written at start), so that the servers of two test workers fit in 24 GiB together.
SERVE_ARGS = [
    "--dtype",
    "float32",
    "--max-model-len",
    "4096",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--kv-cache-memory-bytes",
    str(512 * 2**20),
]
API_TOKEN = "test-token"  # the control-endpoint bearer token of the servers started here


def serve_async(model_dir: str, logs: Path, *extra: str, replicas: int = 2) -> ServeAsyncProcess:
    """`trl vllm-serve-async` with `replicas` CPU replicas of `model_dir`, as users start it, plus `extra` flags;
    its logs (launcher, gateway, replicas) go to the folder `logs`."""
    Path(logs).mkdir(parents=True, exist_ok=True)
    args = ["--data-parallel-size", str(replicas), "--api-token", API_TOKEN, "--log-dir", str(logs)]
    return ServeAsyncProcess(
        model_dir,
        name="vllm-serve-async",
        args=[*args, *extra, *SERVE_ARGS],
        log_path=Path(logs) / "launcher.log",
        startup_timeout=400,
    )
