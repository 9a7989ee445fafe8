"""What `CorrectionMonitor` reports for each importance-sampling mode, on batches with known trainer and engine
logprobs (the live path, through upstream `GRPOTrainer`, is in test_async_rollout.py)."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trl.agents.correction import CorrectionMonitor


def trainer_stub(mode="sequence_mask", low=None, high=3.0):
    """The attributes of `GRPOTrainer` the monitor reads: `args`, `_metrics`, `_generate_and_score_completions`."""
    args = SimpleNamespace(vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=low,
                           vllm_importance_sampling_clip_max=high)  # fmt: skip
    return SimpleNamespace(args=args, _metrics={"train": defaultdict(list)}, _generate_and_score_completions=batch)


def batch(inputs=None):
    """Three rows: a short row on-policy, a long row whose every token is a little off (each ratio 1.5: no token
    outside, but the sequence ratio 1.5**6 > 3), a row with one token far off (ratio e**2) and a masked tool token."""
    engine = torch.zeros(3, 6)
    trainer = torch.zeros(3, 6)
    trainer[1] = math.log(1.5)
    trainer[2, 0] = 2.0
    trainer[2, 3] = 9.0  # a tool-output token: not sampled, never counted
    completion = torch.tensor([[1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 0, 0]])
    tool = torch.tensor([[1] * 6, [1] * 6, [1, 1, 1, 0, 1, 1]])
    return {"old_per_token_logps": trainer, "sampling_per_token_logps": engine, "completion_mask": completion,
            "tool_mask": tool}  # fmt: skip


@pytest.mark.parametrize("mode", ["sequence_mask", "token_truncate"])
def test_every_mode_is_counted_and_the_configured_one_is_active(mode):
    trainer = trainer_stub(mode)
    monitor = CorrectionMonitor(trainer, row_staleness=lambda: [0, 1, 1])
    output = trainer._generate_and_score_completions({"prompt": []})  # upstream's method, wrapped by the monitor
    assert output.keys() == batch().keys()  # the batch goes on to the trainer as upstream built it
    m = monitor.last_metrics
    # 11 sampled tokens: row 0 has 2, row 1 has 6, row 2 has 3 (its 4th token is a tool output)
    assert m["agent/correction/sequence_rows"] == pytest.approx(2 / 3)  # rows 1 (1.5**6) and 2 (e**2)
    assert m["agent/correction/sequence_tokens"] == pytest.approx(9 / 11)
    assert m["agent/correction/token_tokens"] == pytest.approx(1 / 11)  # only row 2's first token
    assert m["agent/correction/token_rows"] == pytest.approx(1 / 3)
    assert m["agent/correction/stale_sequence_rows"] == 1.0  # both stale rows are outside as a sequence
    level = "sequence" if mode.startswith("sequence") else "token"
    assert m["agent/correction/active_tokens"] == m[f"agent/correction/{level}_tokens"]
    assert trainer._metrics["train"]["agent/correction/sequence_rows"] == [pytest.approx(2 / 3)]
    assert [(n, b, o) for n, b, _, o in monitor.last_rows] == [(2, 0, 0), (6, 1, 0), (3, 1, 1)]
    assert monitor.last_rows[1][2] == pytest.approx(6 * math.log(1.5))


def test_a_lower_bound_counts_ratios_below_it_and_unscored_tokens_count_as_ratio_one():
    monitor = CorrectionMonitor(trainer_stub("token_mask", low=0.5, high=None))
    engine = torch.tensor([[0.0, 0.0, float("nan")]])
    trainer = torch.tensor([[-1.0, 0.0, -5.0]])  # ratio e**-1 < 0.5; the NaN-scored token is not counted
    monitor.observe({"old_per_token_logps": trainer, "sampling_per_token_logps": engine,
                     "completion_mask": torch.ones(1, 3)})  # fmt: skip
    assert monitor.last_metrics["agent/correction/token_tokens"] == pytest.approx(1 / 3)
    assert "agent/correction/stale_sequence_rows" not in monitor.last_metrics  # no staleness given: no stale rows


def test_a_batch_without_both_logprobs_logs_nothing():
    trainer = trainer_stub()
    monitor = CorrectionMonitor(trainer)
    monitor.observe({"completion_mask": torch.ones(1, 2)})
    assert monitor.last_metrics == {} and not trainer._metrics["train"]
