"""What padding costs a training forward + backward on this CPU, at the demo's batch shapes (issue 24's question).

Setup:  make install
Usage:  python benchmarks/bench_padding_cpu.py [--rows 16] [--repeats 2] [--out FILE.json]

The model is the demo's tiny coder (`examples/code_repair/tiny-coder`, fp32, SDPA attention). The rows have the
demo's shapes: a 600-700-token prompt and a 150-580-token completion each (seeded; measured in `make demo`: about
14.5k tokens per GRPO step, completions 150-600). The same rows go through a forward and a backward (log-softmax of
the last 600 positions) five ways:

* one batch of all rows, left-padded to the longest (what upstream `GRPOTrainer` does with
  `per_device_train_batch_size` = the whole generation batch, as the demo runs it);
* micro-batches of 4 rows, each padded to the batch's longest (upstream with gradient accumulation: the generation
  batch is padded once, before it is split), shuffled; then each trimmed to its own longest row; then trimmed and
  grouped by length;
* one row at a time, no padding.

Prints seconds per pass (the best of `--repeats`). Not a trainer step: no GRPO loss, optimizer or logging.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


MODEL = Path(__file__).resolve().parents[1] / "examples" / "code_repair" / "tiny-coder"


def run(model, groups: list[list[tuple[int, int]]], width: int | None) -> float:
    """Forward + backward of each group of (prompt, completion) lengths, left-padded to `width` (None: to the
    group's own longest row; a group of one row is sent without a mask)."""
    started = time.perf_counter()
    for rows in groups:
        length = width or max(p + c for p, c in rows)
        ids = torch.randint(0, model.config.vocab_size, (len(rows), length))
        mask = torch.zeros_like(ids)
        for i, (p, c) in enumerate(rows):
            mask[i, length - p - c :] = 1
        kwargs = {} if len(rows) == 1 and width is None else {"attention_mask": mask}
        logits = model(input_ids=ids, **kwargs).logits
        logits[:, -600:].log_softmax(-1).mean().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    rng = random.Random(0)
    rows = [(rng.randint(600, 700), rng.randint(150, 580)) for _ in range(args.rows)]
    widest = max(p + c for p, c in rows)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    by_length = sorted(rows, key=sum)
    cases = {
        "one batch, padded to the longest": ([rows], widest),
        "micro-batches of 4, padded to the batch's longest": ([shuffled[i : i + 4] for i in range(0, len(rows), 4)], widest),
        "micro-batches of 4, each trimmed": ([shuffled[i : i + 4] for i in range(0, len(rows), 4)], None),
        "micro-batches of 4, trimmed, grouped by length": ([by_length[i : i + 4] for i in range(0, len(rows), 4)], None),
        "one row at a time, no padding": ([[row] for row in rows], None),
    }  # fmt: skip
    tokens = sum(p + c for p, c in rows)
    print(f"{len(rows)} rows, {tokens} tokens ({len(rows) * widest} padded to the longest), {torch.get_num_threads()} "
          f"threads, attention {model.config._attn_implementation}")  # fmt: skip
    results = {}
    for name, (groups, width) in cases.items():
        run(model, groups, width)  # warm-up
        results[name] = min(run(model, groups, width) for _ in range(args.repeats))
        print(f"{results[name]:7.2f} s  {name}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "tokens": tokens, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
