"""Shared fixtures: the tiny model (built once per run) and a real vLLM server on it, torn down whatever happens."""

from __future__ import annotations

import pytest

from trl.agents.server.replica import VLLMReplica, cpu_defaults
from trl.agents.tiny_model import build


# Flags every test server uses: float32 so engine logprobs can be compared with the trainer's; hermes tool parsing.
SERVE_ARGS = [
    "--dtype",
    "float32",
    "--max-model-len",
    "4096",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """vLLM's own OpenAI server on the tiny model, as a subprocess on a free port (about 40 s to start)."""
    log = tmp_path_factory.mktemp("logs") / "vllm.log"
    replica = VLLMReplica(tiny_model_dir, args=[*SERVE_ARGS, *cpu_defaults(SERVE_ARGS)], log_path=log)
    replica.start()
    try:
        replica.wait_ready(timeout=300)
        yield replica
    finally:
        replica.stop()
