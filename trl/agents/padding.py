"""WIP (issue 24, not wired in, not CI-verified): each GRPO micro-batch trimmed to its own longest row.

Upstream `GRPOTrainer` pads the whole generation batch once (prompts on the left, completions on the right) and then
splits it into micro-batches, so every micro-batch runs at the generation batch's widest row. With long-tailed agent
episodes most of a micro-batch can be padding, and on CPU a padding mask also takes SDPA off its fused causal kernel
(`benchmarks/bench_padding_cpu.py`: the demo's 16 rows in one padded batch 10.6 s, one at a time 6.4 s).

`trim_padding(trainer)` wraps the trainer's `_prepare_inputs` (the step that hands `training_step` its micro-batch)
on the instance, as `correction.CorrectionMonitor` wraps `_generate_and_score_completions`, and cuts the columns that
are padding in every row of the micro-batch: leading prompt columns, trailing completion columns. Every tensor with
the completion's width is cut alike (`completion_ids`, `completion_mask`, `tool_mask`, the per-token logps and
ratios); a per-sequence `importance_sampling_ratio` (width 1) is left alone. Cutting leading prompt columns shifts
every row's absolute positions by the same amount; RoPE attention depends on relative positions only.

Not here: packing several episodes into one row (needs position ids and varlen attention through the model), and the
old-logps / reference forwards, which upstream runs on the whole generation batch before the split.
"""

from __future__ import annotations

from typing import Any

import torch


def trim_micro_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` (one micro-batch of `GRPOTrainer._prepare_inputs`) without the columns that are padding in every row."""
    prompt_mask, completion_mask = batch["prompt_mask"], batch["completion_mask"]
    rows, width = completion_mask.shape
    used = prompt_mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else prompt_mask.size(1)
    used = completion_mask.any(dim=0).nonzero()
    end = int(used[-1]) + 1 if len(used) else 1
    out = dict(batch)
    for key, value in batch.items():
        if not torch.is_tensor(value) or value.dim() != 2 or value.size(0) != rows:
            continue
        if key in ("prompt_ids", "prompt_mask"):
            out[key] = value[:, start:]
        elif value.size(1) == width and width > 1:
            out[key] = value[:, :end]
    return out


def trim_padding(trainer: Any) -> Any:
    """Make `trainer` (a `GRPOTrainer`) trim each micro-batch it trains on; returns it."""
    prepare = trainer._prepare_inputs

    def prepared(generation_batch):
        return trim_micro_batch(prepare(generation_batch))

    trainer._prepare_inputs = prepared
    return trainer
