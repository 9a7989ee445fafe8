"""Shared fixtures: the tiny model (built once per run) and a real vLLM server on it, torn down whatever happens."""

from __future__ import annotations

import os

import pytest

from trl.agents.server.process import VLLMReplica, cpu_defaults
from trl.agents.testing.servers import API_TOKEN, SERVE_ARGS, serve_async
from trl.agents.tiny_model import build


@pytest.fixture
def serve_args() -> list[str]:
    return list(SERVE_ARGS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """vLLM's own OpenAI server on the tiny model, as a subprocess on a free port (about 40 s to start)."""
    log = tmp_path_factory.mktemp("logs") / "vllm.log"
    with VLLMReplica(tiny_model_dir, args=[*SERVE_ARGS, *cpu_defaults(SERVE_ARGS)], log_path=log) as replica:
        yield replica


os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not try to download its price list


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers that pass the gateway fixture's control-endpoint check."""
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def gateway(tiny_model_dir, tmp_path_factory):
    """The gateway the HTTP tests use (about 40 s to start)."""
    server = serve_async(
        tiny_model_dir,
        tmp_path_factory.mktemp("gateway-logs"),
        "--reasoning-parser", "qwen3",  # reasoning split from content, as with real Qwen3 models
        # the tests force reasoning + tool calls with a regex: apply it inside <think> too
        "--structured-outputs-config", '{"enable_in_reasoning": true}',
    )  # fmt: skip
    with server:
        yield server
