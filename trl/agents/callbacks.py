"""`WeightSyncCallback`: keep a `trl vllm-serve-async` gateway serving the policy a stock trainer is training.

A `transformers.TrainerCallback`, so `GRPOTrainer` (or any `Trainer`) syncs after every k optimizer steps without
being subclassed. Every process calls `ServerClient.update_weights` (ZeRO-3 gathers are collective); only the main
process sends. Not here: how the weights travel (`client.py`, `weights/`).
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback


logger = logging.getLogger("trl.agents.callbacks")


class WeightSyncCallback(TrainerCallback):
    """Send the model's weights to the gateway every `every` optimizer steps (and, if asked, before training).

    Args:
        client: A `trl.agents.ServerClient` for the gateway the rollouts use.
        every: Sync after every `every`-th optimizer step.
        lora: For PEFT models, `"merge"` (full weights with adapters merged in) or `"adapter"` (adapter only; the
            replicas need `--enable-lora`).
        sync_on_train_begin: Also sync before the first step (when the trainer starts from other weights than the
            server, e.g. a checkpoint).

    After each sync, `history` holds `(global_step, policy_version, seconds)`, and the next log entry gets
    `weight_sync/seconds` and `weight_sync/version` (seen by the console log and by callbacks added after this one;
    `report_to` integrations run before user callbacks, so they do not see them).
    """

    def __init__(self, client, every: int = 1, lora: str = "merge", sync_on_train_begin: bool = False):
        if every < 1:
            raise ValueError(f"every must be at least 1, not {every}")
        if lora not in ("merge", "adapter"):
            raise ValueError(f"lora must be 'merge' or 'adapter', not {lora!r}")
        self.client = client
        self.every = every
        self.lora = lora
        self.sync_on_train_begin = sync_on_train_begin
        self.history: list[tuple[int, int, float]] = []
        self._pending_log: dict[str, float] = {}

    def _sync(self, args, state, model) -> None:
        if model is None:
            raise ValueError("WeightSyncCallback needs the trainer's model (the trainer passes it to callbacks)")
        version = self.client.update_weights(model, rank=args.process_index, lora=self.lora)
        if args.world_size > 1:
            # no process may start its next rollout before rank 0's sync is done, or it samples the old policy
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
                version = self.client.weight_version
        seconds = self.client.last_sync.get("seconds", 0.0) if args.process_index == 0 else 0.0
        self.history.append((state.global_step, version, seconds))
        self._pending_log = {"weight_sync/seconds": seconds, "weight_sync/version": float(version)}
        if args.process_index == 0:
            logger.info("step %d: policy version %d synced in %.2f s", state.global_step, version, seconds)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.sync_on_train_begin:
            self._sync(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._sync(args, state, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self._pending_log:
            logs.update(self._pending_log)
            self._pending_log = {}
