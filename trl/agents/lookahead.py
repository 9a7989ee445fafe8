"""Episodes for the trainer's next batches, started while it trains on the current one (`AgentRollout(max_staleness=k)`).

Upstream `GRPOTrainer` hands a `rollout_func` its prompts only when it asks for a batch. To start episodes ahead,
`BatchPlan` follows the trainer's own sampler: it iterates the batch sampler of a second copy of the trainer's
train dataloader (`trainer.get_train_dataloader()`, the public method the trainer itself uses: same sampler, same
seed, same per-process shard) and keeps every generation batch (the dataloader repeats each one `steps_per_generation x
num_iterations` times; the trainer generates on the first). Each batch the trainer then asks for is checked against
the prediction (`prompt_key` of every prompt, in order).

**The admission rule** (`lookahead`): when the trainer asks for batch s (it then holds policy version v_s), the
episodes of batches s+1 .. s+j may start, where j = k // d and d is how many policy versions one batch moves
(optimizer steps per generation batch, one sync per step: measured from the versions seen, the trainer's
arguments until then). Those episodes sample at versions >= v_s and are trained at v_{s+j} <= v_s + k, so no turn
is more than k versions behind the weights it is trained with. Nothing is dropped for being slow: a batch the
trainer asks for is waited for, however long its slowest episode runs. k = 0 starts nothing ahead.

**A miss** (the trainer asks for a batch the plan did not predict: resuming from a checkpoint skips batches, a
custom sampler or dataloader orders them differently) runs that batch synchronously and is counted. The episodes
started for the wrong batches still finish (their sessions are closed) and are counted as discarded, never
trained on. The plan then searches ahead for the batch it missed (resuming lands there); when it cannot find it, it
turns itself off and every later batch runs synchronously.

Not here: running episodes (`rollout.AgentRollout`), weight syncs (the gateway pauses new turns while a sync runs
and waits for turns in flight, so each recorded turn has one policy version).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from .trajectory import Trajectory


logger = logging.getLogger("trl.agents.rollout")


def generation_period(trainer) -> int:
    """Dataloader batches per generation batch: the trainer generates on one, then reuses it
    `steps_per_generation x num_iterations` times."""
    args = getattr(trainer, "args", None)
    steps = getattr(args, "steps_per_generation", 1) or 1
    iterations = getattr(trainer, "num_iterations", getattr(args, "num_iterations", 1)) or 1
    return max(1, steps * iterations)


def versions_per_batch(trainer) -> int:
    """Policy versions one generation batch moves: optimizer steps per batch, assuming a sync after every step."""
    accumulation = getattr(getattr(trainer, "args", None), "gradient_accumulation_steps", 1) or 1
    return max(1, -(-generation_period(trainer) // accumulation))


class BatchPlan:
    """The generation batches the trainer will ask for, in order (rows of its train dataset, this process's shard)."""

    def __init__(self, trainer, key, max_scan: int = 10_000):
        self._trainer = trainer
        self._key = key  # prompt -> hashable key
        self._max_scan = max_scan
        self._every = generation_period(trainer)
        self._batches = self._generation_batches()
        self.enabled = True

    def _generation_batches(self) -> Iterator[list[dict[str, Any]]]:
        # The dataloader's batch sampler (accelerate's shard of it under several processes) gives the indices; the
        # rows are read from its dataset directly, so iterating here runs no collective and touches no RNG state
        # of the trainer's (iterating the prepared dataloader itself would synchronise RNG states across ranks).
        loader = self._trainer.get_train_dataloader()
        sampler, dataset = getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)
        if sampler is None or dataset is None or not hasattr(dataset, "__getitem__"):
            logger.warning("max_staleness: the train dataloader has no batch sampler over an indexable dataset "
                           "(an iterable dataset?): episodes start only when the trainer asks for them")  # fmt: skip
            self.enabled = False
            return
        position = 0
        while True:  # one pass per epoch, as the trainer's loop does
            empty = True
            for indices in sampler:
                empty = False
                if position % self._every == 0:
                    yield [dict(dataset[i]) for i in indices]
                position += 1
            if empty:
                return

    def next(self) -> list[dict[str, Any]] | None:
        """The next predicted batch, or `None` when the plan is off or the data has run out."""
        if not self.enabled:
            return None
        return next(self._batches, None)

    def keys(self, rows: list[dict[str, Any]]) -> list[str]:
        return [self._key(row["prompt"]) for row in rows]

    def realign(self, keys: list[str]) -> bool:
        """After a miss: move the plan to just after the batch `keys` (searching from the start of training, as
        resuming skips batches from there). Turns the plan off when the batch is not found."""
        self._batches = self._generation_batches()
        for _ in range(self._max_scan):
            batch = next(self._batches, None)
            if batch is None:
                break
            if self.keys(batch) == keys:
                return True
        logger.warning(
            "max_staleness: the trainer asked for a batch its train dataloader does not produce (a custom sampler or "
            "dataloader?): episodes now start only when the trainer asks for them"
        )
        self.enabled = False
        return False


def staleness(trajectory: Trajectory | None, version: int) -> tuple[int, int, int] | None:
    """How far the trained segment (the last) is behind `version`: (versions behind of its oldest turn, sampled
    tokens, sum over those tokens of their turn's versions behind). `None` without turns."""
    if trajectory is None or not trajectory.segments or not trajectory.segments[-1].turns:
        return None
    turns = trajectory.segments[-1].turns
    behind = [max(0, version - turn.policy_version) for turn in turns]
    tokens = sum(turn.completion_tokens for turn in turns)
    return max(behind), tokens, sum(b * turn.completion_tokens for b, turn in zip(behind, turns, strict=True))
