"""Shared fixtures: the tiny model (built once per run) and a real vLLM server on it, torn down whatever happens."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from trl.agents.server.process import ServeAsyncProcess, VLLMReplica, cpu_defaults
from trl.agents.tiny_model import build


# The example plugins ship as plain script folders (run as `python examples/code_repair/grpo.py`): import them the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "code_repair"))

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


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a shell command.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "all": {"type": "boolean"}},
                "required": ["command"],
            },
        },
    }
]
# The random model cannot reason or call tools by itself: a structured-output regex makes it produce this turn.
FORCED_TURN = (
    '<think>\nList the files first.\n</think>\n\n<tool_call>\n{"name": "shell", "arguments": {"command": "ls", "all": true}}'
    "\n</tool_call>"
)
FORCE = {"structured_outputs": {"regex": re.escape(FORCED_TURN)}}


@pytest.fixture
def serve_args() -> list[str]:
    return list(SERVE_ARGS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build(tmp_path_factory.mktemp("tiny-model")))


def trainer_logprobs(model, token_ids: list[int], start: int):
    """The model's logprob of each of `token_ids[start:]` given what precedes it, and the best logprob at each of
    those positions (one float32 forward pass, no gradient)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0, start - 1 : len(token_ids) - 1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(1, torch.tensor(token_ids[start:])[:, None])[:, 0], logprobs.max(-1).values


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

API_TOKEN = "test-token"  # the gateway fixture protects its control endpoints with this bearer token


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers that pass the gateway fixture's control-endpoint check."""
    return {"Authorization": f"Bearer {API_TOKEN}"}


def serve_async(model_dir: str, logs, *extra: str) -> ServeAsyncProcess:
    """`trl vllm-serve-async` with 2 CPU replicas of `model_dir`, as users start it, plus `extra` flags."""
    return ServeAsyncProcess(
        model_dir,
        name="vllm-serve-async",
        args=["--data-parallel-size", "2", "--api-token", API_TOKEN, "--log-dir", str(logs), *extra, *SERVE_ARGS],
        log_path=logs / "launcher.log",
        startup_timeout=400,
    )


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
