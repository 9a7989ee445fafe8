"""Constants and helpers the tests share (fixtures live in `conftest.py`; servers in `trl.agents.testing`)."""

from __future__ import annotations

import re

import httpx


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
# The tiny model's ids of its markup tokens (its build is byte-identical; `tests/test_tiny_model.py` checks them).
MARKUP_IDS = {"<think>": 3070, "</think>": 3071, "<tool_call>": 3066, "</tool_call>": 3067}
# The random model cannot reason or call tools by itself: a structured-output regex makes it produce this turn. The
# regex also admits the markup spelled out in plain characters ("<", "think", ">"), which vLLM's streaming parsers
# (token-id based) do not take for markup: the bias makes the engine pick the markup tokens wherever they fit.
FORCED_TURN = (
    '<think>\nList the files first.\n</think>\n\n<tool_call>\n{"name": "shell", "arguments": {"command": "ls", "all": true}}'
    "\n</tool_call>"
)
FORCE = {
    "structured_outputs": {"regex": re.escape(FORCED_TURN)},
    "logit_bias": {str(i): 100 for i in MARKUP_IDS.values()},
}


def plain_text_bias(tokenizer) -> dict[str, int]:
    """A `logit_bias` that keeps the random model to plain ASCII text: no markup token (`<think>`, `<tool_call>`, ...)
    and no byte of a multi-byte character, whose decoding depends on where a turn or a stream chunk ends (vLLM's
    incremental detokenizer holds a partial character back; `decode` spells it U+FFFD). The end-of-turn token is
    banned too: with `ignore_eos` vLLM writes a sampled `<|im_end|>` into the text, where `decode` skips it (seen
    once in a 300-token stream); without `ignore_eos` turns run to `max_tokens`."""
    markup = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    banned = set(tokenizer.convert_tokens_to_ids(markup))
    banned |= {i for i in range(len(tokenizer)) if not tokenizer.decode([i]).isascii()}
    return {str(i): -100 for i in sorted(banned)}


def trainer_logprobs(model, token_ids: list[int], start: int):
    """The model's logprob of each of `token_ids[start:]` given what precedes it, and the best logprob at each of
    those positions (one float32 forward pass, no gradient)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0, start - 1 : len(token_ids) - 1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(1, torch.tensor(token_ids[start:])[:, None])[:, 0], logprobs.max(-1).values


AUTH = {"Authorization": "Bearer test-token"}  # the gateway fixture's token (tests/conftest.py)


def trajectory(gateway, sid: str) -> dict:
    response = httpx.get(f"{gateway.url}/sessions/{sid}/trajectory", headers=AUTH, timeout=30)
    response.raise_for_status()
    return response.json()


def sampled_runs(segment: dict) -> list[list[int]]:
    """Token ids of each maximal run of mask == 1 (one run per turn)."""
    runs, current = [], []
    for token, m in zip(segment["token_ids"], segment["mask"], strict=True):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def upstream_calls(url: str) -> dict[str, float]:
    """The gateway's calls to its replicas and render servers so far, by path (its `/metrics`)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.finditer(r'^trl_agents_upstream_calls_total\{path="([^"]+)"\} (\S+)', text, re.M)
    return {m[1]: float(m[2]) for m in found}
