"""vLLM's own server on the tiny model, spoken to through the official `openai` client: one replica of the shared
`gateway` fixture, addressed directly (the same `VLLMReplica` server, flags and model; no second engine started)."""

from __future__ import annotations

import re

import openai
import pytest
from transformers import AutoTokenizer

from tests.helpers import MARKUP_IDS


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a shell command.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    }
]


@pytest.fixture(scope="module")
def client(gateway):
    replica = gateway.replica_urls()[0]
    return openai.OpenAI(base_url=f"{replica}/v1", api_key="unused", timeout=60, max_retries=0)


def test_chat_returns_token_ids_that_decode_to_the_text(client, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reply = client.chat.completions.create(
        model=tiny_model_dir,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=24,
        temperature=0,
        # the replica parses reasoning (qwen3): without thinking the whole reply is content
        extra_body={"return_token_ids": True, "chat_template_kwargs": {"enable_thinking": False}},
    )
    choice = reply.choices[0]
    ids = choice.model_extra["token_ids"]
    assert len(ids) == reply.usage.completion_tokens > 0
    assert tokenizer.decode(ids, skip_special_tokens=True) == choice.message.content
    prompt_ids = reply.model_extra["prompt_token_ids"]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say something."}],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
        enable_thinking=False,
    )
    assert prompt_ids == rendered


def test_hermes_parser_reads_the_templates_tool_calls(client, tiny_model_dir):
    call = '<tool_call>\n{"name": "shell", "arguments": {"command": "ls -a", "verbose": true}}\n</tool_call>'
    reply = client.chat.completions.create(
        model=tiny_model_dir,
        messages=[{"role": "user", "content": "List the files."}],
        tools=TOOLS,
        max_tokens=200,  # room for a call spelled in many small tokens
        # The random model cannot call tools by itself: a regex constrains it to emit exactly this call, and a bias
        # makes it take the markup tokens (the regex also admits "<tool_call>" spelled out in characters, which can
        # run past a small max_tokens: seen once in 4 runs with max_tokens 64).
        extra_body={
            "structured_outputs": {"regex": re.escape(call)},
            "logit_bias": {str(MARKUP_IDS[tag]): 100 for tag in ("<tool_call>", "</tool_call>")},
        },
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tool_call,) = choice.message.tool_calls
    assert tool_call.function.name == "shell"
    assert tool_call.function.arguments == '{"command": "ls -a", "verbose": true}'


def test_unknown_model_is_a_clear_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
