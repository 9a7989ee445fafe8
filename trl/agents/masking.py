"""Token sequences whose trainability is decided when each token is appended: the one place masks are built.

A `MaskedTokens` grows by two operations only: `add_context(ids)` for tokens the model did not produce (prompt,
template, tool results, user turns; mask 0, no logprob) and `add_sampled(ids, logprobs)` for tokens the engine
sampled (mask 1, engine logprob). The gateway records sessions with it and the rollout hook and the SFT collator
read it, so "which tokens are trained on" is decided here and nowhere else.

Not here: rendering chat messages or talking to a server. Masks are never recovered from decoded text.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
