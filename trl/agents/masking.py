"""Token sequences whose trainability is decided when each token is appended: the one place masks are built.

A `MaskedTokens` grows by two operations only: `add_context(ids)` for tokens the model did not produce (prompt,
template, tool results, user turns; mask 0, no logprob) and `add_sampled(ids, logprobs)` for tokens the engine
sampled (mask 1, engine logprob). The gateway records sessions with it and the rollout hook and the SFT collator
read it, so "which tokens are trained on" is decided here and nowhere else.

Not here: rendering chat messages or talking to a server, reading recorded JSON (`trajectory.SegmentRecord` holds
its tokens in a `MaskedTokens`). Masks are never recovered from decoded text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class MaskedTokens:
    """Token ids with a parallel 0/1 mask (1 = sampled by the model) and parallel engine logprobs."""

    token_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)

    def __post_init__(self):
        if not len(self.token_ids) == len(self.mask) == len(self.logprobs):
            raise ValueError(
                f"token_ids, mask and logprobs must have equal lengths, got "
                f"{len(self.token_ids)}, {len(self.mask)}, {len(self.logprobs)}"
            )

    def __len__(self) -> int:
        return len(self.token_ids)

    def add_context(self, ids: list[int]) -> None:
        """Append tokens the model did not sample (prompt, template, environment): mask 0, logprob `None`."""
        self.token_ids.extend(ids)
        self.mask.extend([0] * len(ids))
        self.logprobs.extend([None] * len(ids))

    def add_sampled(self, ids: list[int], logprobs: list[float] | None = None) -> None:
        """Append tokens the model sampled: mask 1, with the engine's logprob of each when known."""
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"{len(ids)} sampled tokens but {len(logprobs)} logprobs")
        self.token_ids.extend(ids)
        self.mask.extend([1] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [None] * len(ids))

    @property
    def prompt_length(self) -> int:
        """Number of tokens before the first sampled one (the whole length if nothing was sampled)."""
        return next((i for i, m in enumerate(self.mask) if m), len(self.mask))

    @property
    def num_sampled(self) -> int:
        return sum(self.mask)

    def labels(self, ignore_index: int = -100) -> list[int]:
        """Language-modelling labels: the token where the model sampled it, `ignore_index` everywhere else."""
        return [t if m else ignore_index for t, m in zip(self.token_ids, self.mask, strict=True)]

    def split(self, max_completion_length: int | None = None) -> RolloutRow:
        """Split into a GRPO row: the prompt (everything before the first sampled token) and the completion.

        The completion keeps the environment's tokens between turns, with `env_mask` 0 and logprob 0.0, so the
        trainer sees the same context the engine saw. Completions longer than `max_completion_length` are cut at
        that length; `clipped` says how many tokens were cut.
        """
        start = self.prompt_length
        end = len(self) if max_completion_length is None else min(len(self), start + max_completion_length)
        return RolloutRow(
            prompt_ids=self.token_ids[:start],
            completion_ids=self.token_ids[start:end],
            env_mask=self.mask[start:end],
            logprobs=[lp if lp is not None else 0.0 for lp in self.logprobs[start:end]],
            clipped=len(self) - end,
        )


class RolloutRow(NamedTuple):
    """One row of upstream `rollout_func` output."""

    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]  # 1 where the model sampled the token
    logprobs: list[float]  # the engine's logprob of sampled tokens, 0.0 elsewhere
    clipped: int = 0  # tokens cut off by `max_completion_length`


def last_turn_only(tokens: MaskedTokens) -> MaskedTokens:
    """The same tokens with only the last run of sampled tokens kept trainable (completion-only training)."""
    mask = list(tokens.mask)
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    keep = [1 if start <= i < end else 0 for i in range(len(mask))]
    return MaskedTokens(
        list(tokens.token_ids), keep, [lp if k else None for lp, k in zip(tokens.logprobs, keep, strict=True)]
    )
