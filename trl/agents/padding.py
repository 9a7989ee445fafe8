"""Each GRPO micro-batch trimmed to its own longest row, through `GRPOTrainer.compute_loss`.

Upstream `GRPOTrainer` pads the whole generation batch once (prompts on the left, completions on the right) and then
splits it into micro-batches, so every micro-batch runs at the generation batch's widest row. With long-tailed agent
episodes most of a micro-batch can be padding, and on CPU a padding mask also takes SDPA off its fused causal kernel
(`benchmarks/bench_padding_cpu.py`: the demo's 16 rows in one padded batch 10.6 s, one row at a time 6.4 s).

`trim_padding(trainer)` wraps the trainer's `compute_loss` (Trainer's documented override point: it receives one
micro-batch) on the instance and cuts the columns that are padding in every row: leading prompt columns, trailing
completion columns. Every per-token tensor of the completion is cut alike; a per-sequence `importance_sampling_ratio`
(width 1) is left alone. The loss does not change: the cut columns carry a zero mask in every row, upstream's loss
normalisers count active tokens (or use `max_completion_length`), and cutting common leading columns shifts every
row's positions by the same amount, to which RoPE attention is blind (tests/test_padding.py checks one optimizer step
trimmed and untrimmed on rows of very different lengths). With `per_device_train_batch_size=1` no padding is left.

Not here: packing several episodes into one row (needs position ids and varlen attention through the model);
multimodal batches (their image tensors are laid out per prompt token), which pass through untouched; the old-logps
and reference forwards, which upstream runs on the whole generation batch before the split. The upstream form of this
change is `docs/upstream/trl-grpo-trim-micro-batches.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


PROMPT_KEYS = ("prompt_ids", "prompt_mask")
# (B, C) tensors of `_generate_and_score_completions`' output that are per completion token
COMPLETION_KEYS = ("completion_ids", "completion_mask", "tool_mask", "old_per_token_logps", "ref_per_token_logps",
                   "sampling_per_token_logps", "importance_sampling_ratio")  # fmt: skip
MULTIMODAL_KEYS = ("pixel_values", "token_type_ids", "mm_token_type_ids", "image_grid_thw")


def trim_micro_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` (one GRPO micro-batch) without the columns that are padding in every row; a new dict."""
    if any(key in batch for key in MULTIMODAL_KEYS):
        return batch
    prompt_mask, completion_mask = batch["prompt_mask"], batch["completion_mask"]
    width = completion_mask.size(1)
    used = prompt_mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else prompt_mask.size(1) - 1  # keep one column: the model needs an input
    used = completion_mask.any(dim=0).nonzero()
    end = int(used[-1]) + 1 if len(used) else 1
    out = dict(batch)
    for key in PROMPT_KEYS:
        out[key] = batch[key][:, start:]
    for key in COMPLETION_KEYS:
        value = batch.get(key)
        if torch.is_tensor(value) and value.dim() == 2 and value.size(1) == width:
            out[key] = value[:, :end]
    return out


def applied_transform(trainer: Any, name: str) -> Any:
    """The value a `transform_micro_batches` wrapper named `name` carries in `trainer.compute_loss`'s chain of
    wrappers, or None."""
    fn = trainer.compute_loss
    while fn is not None:
        if hasattr(fn, name):
            return getattr(fn, name)
        fn = getattr(fn, "__wrapped__", None)
    return None


def transform_micro_batches(trainer: Any, name: str, value: Any, transform: Callable[[dict], dict]) -> Any:
    """Wrap `trainer.compute_loss` (Trainer's override point: one micro-batch per call) on the instance so that each
    micro-batch goes through `transform` first; the wrapper carries `name = value` (see `applied_transform`). The one
    place this project hooks GRPO's loss (`trim_padding`, `trl.agents.advantage_weights`); returns the trainer."""
    compute_loss = trainer.compute_loss

    def transformed(model, inputs, *args, **kwargs):
        return compute_loss(model, transform(inputs), *args, **kwargs)

    setattr(transformed, name, value)
    transformed.__wrapped__ = compute_loss
    trainer.compute_loss = transformed
    return trainer


def trim_padding(trainer: Any) -> Any:
    """Make `trainer` (a `GRPOTrainer`) trim each micro-batch before its loss; returns it. Applying it twice is a
    no-op."""
    if applied_transform(trainer, "trims_padding"):
        return trainer
    return transform_micro_batches(trainer, "trims_padding", True, trim_micro_batch)
