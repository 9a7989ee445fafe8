"""GRPO with the episodes worse than their group's mean weighted down, through `GRPOTrainer.compute_loss`.

GRPO's advantages are centred in each group: the loss raises the log-probability of every sampled token of the
episodes that beat their group and lowers that of every token of the episodes that lost. An agent episode that failed
is mostly tokens the policy got right (a coding agent's failed episode is typically a correct tool call or two and
then one copying error it never recovers from), so the second half of the loss flattens the policy as much as the
first half sharpens it, and with upstream's default `loss_type="dapo"` (a sum over tokens) the long failing episodes
weigh most. `weight_negative_advantages(trainer, negative)` multiplies the negative advantages of each micro-batch by
`negative`: 1 is upstream's loss, 0 keeps only the episodes that beat their group (positive sample reinforcement,
"PSR" in Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning": it sharpens
the policy, raising the solved rate of one sample at the cost of diversity). What it did on the demo:
`benchmarks/RESULTS.md` section 9.

It wraps `compute_loss` (Trainer's documented override point: it gets one micro-batch with its `advantages`) on the
instance through `trl.agents.padding.transform_micro_batches`, as `trim_padding` does, with which it composes.
Not here: how advantages are computed (upstream: group-centred rewards, scaled per `scale_rewards`), the loss itself,
reward shaping.
"""

from __future__ import annotations

import functools
from typing import Any

from trl.agents.padding import applied_transform, transform_micro_batches


def check_weight(negative: float) -> None:
    """ValueError unless 0 <= `negative` <= 1."""
    if not 0.0 <= negative <= 1.0:
        raise ValueError(f"negative_advantage_weight {negative}: must be between 0 (drop them) and 1 (upstream)")


def weighted_advantages(batch: dict[str, Any], negative: float) -> dict[str, Any]:
    """`batch` (one GRPO micro-batch) with its negative advantages multiplied by `negative`; a new dict."""
    advantages = batch["advantages"]
    return {**batch, "advantages": advantages.clamp(min=0) + negative * advantages.clamp(max=0)}


def weight_negative_advantages(trainer: Any, negative: float) -> Any:
    """Make `trainer` (a `GRPOTrainer`) weight the advantages of its below-average episodes by `negative` (0 to 1);
    returns it. 1 leaves the trainer as it was; applying the same weight twice is a no-op, another one an error."""
    check_weight(negative)
    applied = applied_transform(trainer, "negative_advantage_weight")
    if applied is not None:
        if applied != negative:
            raise ValueError(f"this trainer already weights negative advantages by {applied}, not {negative}")
        return trainer
    if negative == 1.0:
        return trainer
    transform = functools.partial(weighted_advantages, negative=negative)
    return transform_micro_batches(trainer, "negative_advantage_weight", negative, transform)
