"""Collation throughput of `DataCollatorForAgentTrajectories` on 1,000 multi-turn agent trajectories.

Setup:  make install
Usage:  python benchmarks/bench_collator.py [--trajectories 1000] [--batch-size 8]

Builds the tiny model's tokenizer (Qwen3-like template), generates `--trajectories` conversations of 2-6 assistant
turns with tool calls, tool results and reasoning, and times collating them in batches twice: as conversations
(`{"messages", "tools"}`: rendered turn by turn with the chat template, the costly path) and as recorded segments
(`{"token_ids", "mask"}`: what the gateway records; padding and labels only). Prints tokens/s for each.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from transformers import AutoTokenizer

from trl.agents import DataCollatorForAgentTrajectories
from trl.agents.tiny_model import build


TOOLS = [{"type": "function", "function": {"name": "shell", "description": "Run a command.", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]  # fmt: skip
WORDS = "the test fails because add returns a minus b instead of a plus b so fix calc py and rerun".split()


def conversation(rng: random.Random) -> list[dict]:
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    messages = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": text(30)}]
    for turn in range(rng.randint(2, 6)):
        call = {"id": f"c{turn}", "type": "function", "function": {"name": "shell", "arguments": {"command": text(4)}}}
        messages.append(
            {"role": "assistant", "reasoning_content": text(20), "content": text(10), "tool_calls": [call]}
        )
        messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": text(60)})
    messages.append({"role": "assistant", "content": text(15)})
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(build(tempfile.mkdtemp(prefix="bench-collator-")))
    rng = random.Random(0)
    features = [{"messages": conversation(rng), "tools": TOOLS} for _ in range(args.trajectories)]
    collator = DataCollatorForAgentTrajectories(tokenizer)
    results = {}
    for name in ("conversations", "segments"):
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(features), args.batch_size):
            batch = features[i : i + args.batch_size]
            out = collator(batch)
            tokens += int(out["attention_mask"].sum())
        seconds = time.perf_counter() - start
        results[name] = (tokens, seconds)
        if name == "conversations":  # the same trajectories as the gateway would record them
            features = [{"token_ids": t.token_ids, "mask": t.mask} for t in (collator.encode(f) for f in features)]
    print("\n| features | trajectories | tokens | seconds | tokens/s |")
    print("|---|---|---|---|---|")
    for name, (tokens, seconds) in results.items():
        print(f"| {name} | {args.trajectories} | {tokens} | {seconds:.2f} | {tokens / seconds:,.0f} |")


if __name__ == "__main__":
    main()
