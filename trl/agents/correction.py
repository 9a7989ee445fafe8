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
import math
from collections.abc import Callable

from .metrics import log_metrics


logger = logging.getLogger("trl.agents.rollout")


class GatewayGeneration:
    """What `GRPOTrainer` calls on `trainer.vllm_generation` when a `rollout_func` produces the batch."""

    def sync_weights(self) -> None:
        """Nothing: `WeightSyncCallback` sends the weights to the gateway's replicas after each optimizer step."""


def use_engine_logprobs(trainer, row_staleness: Callable[[], list[int | None]] | None = None):
    """Let `trainer` (upstream `GRPOTrainer` with a `rollout_func`) apply its importance-sampling correction to the
    engine logprobs the rollout returns, and log what it masks or clips (`CorrectionMonitor`, given the rows'
    versions behind by `row_staleness`). Returns the monitor, or `None` when the config turns the correction off."""
    args = trainer.args
    if not getattr(args, "vllm_importance_sampling_correction", False):
        return None
    if getattr(trainer, "rollout_func", None) is None:
        raise ValueError("use_engine_logprobs: the trainer has no rollout_func; its own vLLM setup decides this")
    own_client = getattr(trainer, "use_vllm", False) and not isinstance(
        getattr(trainer, "vllm_generation", None), GatewayGeneration
    )  # TRL's own vLLM client: the correction already applies
    if not own_client:
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
    return CorrectionMonitor(trainer, row_staleness)


class CorrectionMonitor:
    """What upstream's importance-sampling correction does to each batch, logged beside the trainer's own
    `sampling/importance_sampling_ratio/*` (TRL 1.16 logs only the ratio's min/mean/max, so a masked row shows up
    only as min = 0).

    From the batch the trainer built (`old_per_token_logps`: the trainer's logprobs, `sampling_per_token_logps`: the
    engine's, over the sampled tokens), per generation batch, over all processes, for every mode at once so one run
    compares them (outside = the ratio beyond `[clip_min, clip_max]`: masked by `*_mask`, clipped by `*_truncate`):

    * `agent/correction/sequence_rows`, `sequence_tokens`: rows whose sequence ratio (the product over the row's
      sampled tokens) is outside, and the share of sampled tokens in them (`sequence_*` modes);
    * `agent/correction/token_tokens`, `token_rows`: sampled tokens whose own ratio is outside, and rows with one
      (`token_*` modes);
    * `agent/correction/active_tokens`: the share of sampled tokens the configured mode masks or clips;
    * `agent/correction/stale_sequence_rows`: `sequence_rows` over the rows sampled from older weights only (when
      `row_staleness` says which; logged on batches that have one).

    Installed by `use_engine_logprobs`, which `AgentRollout` calls inside the trainer's first generation batch, so
    the counts start with the second batch (the first is sampled by the weights it is trained with anyway).
    `last_rows` keeps this process's rows of the last batch: (sampled tokens, versions behind, sequence log ratio,
    tokens outside). It wraps the trainer's `_generate_and_score_completions` on the instance (what it reads is
    only in that method's result); the upstream proposal logs the masked fraction itself.
    """

    KEYS = ("rows", "tokens", "sequence_rows", "sequence_tokens", "token_tokens", "token_rows", "stale_rows",
            "stale_sequence_rows")  # fmt: skip

    def __init__(self, trainer, row_staleness: Callable[[], list[int | None]] | None = None):
        args = trainer.args
        self.trainer = trainer
        self.row_staleness = row_staleness
        self.mode = args.vllm_importance_sampling_mode
        self.low = args.vllm_importance_sampling_clip_min
        self.high = args.vllm_importance_sampling_clip_max
        self.last_rows: list[tuple[int, int | None, float, int]] = []
        self.last_metrics: dict[str, float] = {}
        original = trainer._generate_and_score_completions

        def generate_and_score(inputs):
            output = original(inputs)
            self.observe(output)
            return output

        trainer._generate_and_score_completions = generate_and_score

    def _outside(self, log_ratio):
        ratio = log_ratio.exp()
        outside = ratio > (self.high if self.high is not None else math.inf)
        if self.low is not None:
            outside |= ratio < self.low
        return outside

    def observe(self, output: dict) -> None:
        """Count, from one batch the trainer built, what each mode masks or clips, and log it."""
        import torch

        trained, engine = output.get("old_per_token_logps"), output.get("sampling_per_token_logps")
        if trained is None or engine is None:
            return
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        diff = torch.nan_to_num((trained - engine) * mask, nan=0.0)  # as upstream: unscored tokens count as ratio 1
        tokens, sequence_log_ratio = mask.sum(dim=1), diff.sum(dim=1)
        sequence_out = self._outside(sequence_log_ratio) & (tokens > 0)
        token_out = self._outside(diff) & mask.bool()
        behind = list(self.row_staleness()) if self.row_staleness is not None else []
        if len(behind) != len(tokens):
            behind = [None] * len(tokens)
        stale = torch.tensor([b is not None and b > 0 for b in behind], device=tokens.device)
        counts = torch.stack([
            (tokens > 0).sum(), tokens.sum(), sequence_out.sum(), tokens[sequence_out].sum(), token_out.sum(),
            token_out.any(dim=1).sum(), (stale & (tokens > 0)).sum(), (stale & sequence_out).sum(),
        ]).double()  # fmt: skip
        self.last_rows = [(int(n), b, float(s), int(o)) for n, b, s, o in
                          zip(tokens, behind, sequence_log_ratio, token_out.sum(dim=1), strict=True)]  # fmt: skip
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            counts = accelerator.gather(counts.to(accelerator.device)).view(-1, len(self.KEYS)).sum(dim=0)
        self._log(dict(zip(self.KEYS, counts.tolist(), strict=True)))

    def _log(self, c: dict[str, float]) -> None:
        rows, tokens = max(c["rows"], 1.0), max(c["tokens"], 1.0)
        metrics = {
            "agent/correction/sequence_rows": c["sequence_rows"] / rows,
            "agent/correction/sequence_tokens": c["sequence_tokens"] / tokens,
            "agent/correction/token_tokens": c["token_tokens"] / tokens,
            "agent/correction/token_rows": c["token_rows"] / rows,
        }
        level = "sequence" if self.mode.startswith("sequence") else "token"
        metrics["agent/correction/active_tokens"] = metrics[f"agent/correction/{level}_tokens"]
        if c["stale_rows"]:
            metrics["agent/correction/stale_sequence_rows"] = c["stale_sequence_rows"] / c["stale_rows"]
        log_metrics(self.trainer, metrics)
        self.last_metrics = metrics
