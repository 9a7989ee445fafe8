"""Upstream's off-policy correction for episodes sampled by the gateway's engines: `use_engine_logprobs(trainer)`.

Rows from `AgentRollout` carry the engine's logprob of every sampled token (`logprobs`), which is what upstream
`GRPOTrainer`'s importance-sampling correction needs (`GRPOConfig.vllm_importance_sampling_correction`,
`vllm_importance_sampling_mode`, `..._clip_min/max`): it recomputes the trainer's logprobs of the batch and weights
(or masks) each token or sequence by trainer/engine. TRL 1.16 applies it only when `trainer.use_vllm` is set, and
`use_vllm=True` in `GRPOConfig` makes the trainer connect its own vLLM client (TRL's `vllm-serve` protocol, which
the gateway does not speak). So this module sets `trainer.use_vllm` on the built trainer and gives it a
`vllm_generation` whose `sync_weights()` does nothing: on the `rollout_func` path that is the only use TRL 1.16 makes
of it (`GRPOTrainer._generate` calls it before each batch), and the gateway's weights are synced by
`WeightSyncCallback`. The upstream change that makes this unnecessary: docs/upstream/trl-rollout-func-importance-sampling.md.

`AgentRollout(max_staleness>=1)` calls it on the first batch when the config asks for the correction (upstream's
default); with max_staleness=0 call it yourself to correct the engine/trainer mismatch too.

Not here: the correction itself (upstream's), how stale a batch is (`lookahead`).
"""

from __future__ import annotations

import logging


logger = logging.getLogger("trl.agents.rollout")


class GatewayGeneration:
    """What `GRPOTrainer` calls on `trainer.vllm_generation` when a `rollout_func` produces the batch."""

    def sync_weights(self) -> None:
        """Nothing: `WeightSyncCallback` sends the weights to the gateway's replicas after each optimizer step."""


def use_engine_logprobs(trainer) -> bool:
    """Let `trainer` (upstream `GRPOTrainer` with a `rollout_func`) apply its importance-sampling correction to the
    engine logprobs the rollout returns. Returns whether it is on (the config may turn it off)."""
    args = trainer.args
    if not getattr(args, "vllm_importance_sampling_correction", False):
        return False
    if getattr(trainer, "rollout_func", None) is None:
        raise ValueError("use_engine_logprobs: the trainer has no rollout_func; its own vLLM setup decides this")
    if getattr(trainer, "use_vllm", False) and not isinstance(getattr(trainer, "vllm_generation", None),
                                                               GatewayGeneration):  # fmt: skip
        return True  # the trainer runs TRL's own vLLM client: the correction already applies
    trainer.use_vllm = True
    trainer.vllm_generation = GatewayGeneration()
    if not hasattr(trainer, "_last_loaded_step"):  # what TRL sets beside its vLLM client; read with `use_vllm`
        trainer._last_loaded_step = -1
    logger.info(
        "importance-sampling correction on engine logprobs: mode %s, clip [%s, %s]",
        args.vllm_importance_sampling_mode,
        getattr(args, "vllm_importance_sampling_clip_min", None),
        getattr(args, "vllm_importance_sampling_clip_max", None),
    )
    return True
