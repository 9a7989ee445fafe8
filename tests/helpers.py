"""Constants and helpers the tests share (fixtures live in `conftest.py`; servers in `trl.agents.testing`)."""

from __future__ import annotations

import re


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


def trainer_logprobs(model, token_ids: list[int], start: int):
    """The model's logprob of each of `token_ids[start:]` given what precedes it, and the best logprob at each of
    those positions (one float32 forward pass, no gradient)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0, start - 1 : len(token_ids) - 1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(1, torch.tensor(token_ids[start:])[:, None])[:, 0], logprobs.max(-1).values
