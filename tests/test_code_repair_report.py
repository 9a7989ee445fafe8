"""The demo report from a run folder: every plot is written, and the tables carry the run's numbers."""

from __future__ import annotations

import argparse
import json

from code_repair import report


def test_report_has_the_numbers_and_the_plots(tmp_path):
    for seed in (0, 1):
        lines = [
            {"step": s, "time": 100.0 + 10 * s, "reward": 0.1 * s + seed, "rewards/diff_similarity_reward/mean": 0.1 * s,
             "rewards/tests_pass_reward/mean": 0.05 * s, "non_empty_rate": 0.5, "agent/episodes_per_hour": 3000.0,
             "agent/batch_seconds": 6.0, "weight_sync/seconds": 0.2, "agent/generation_seconds_per_episode": 2.0,
             "agent/agent_seconds_per_episode": 3.0, "shell_cmd_grep": 4, "shell_cmd_python": 3,
             "agent/tool_calls/shell": 7, "agent/tool_calls/apply_patch": 2}
            for s in range(1, 5)
        ]  # fmt: skip
        (tmp_path / f"metrics-seed{seed}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = {"reward": 0.25, "similarity": 0.2, "solved": 0.05, "non_empty": 0.5, "episodes": 80, "reward_se": 0.03,
              "solved_se": 0.04, "similarity_se": 0.02, "non_empty_se": 0.05, "failed_episodes": 0,
              "solved_by_task": {"t1": 0.1, "t2": 0.0},
              "by_episode": {k: {"reward": r, "solved": s} for k, r, s in
                             [("t1#0", 1.0, 0.0), ("t1#1", 2.0, 1.0), ("t2#0", 0.0, 0.0), ("t2#1", 0.5, 0.0)]}}  # fmt: skip
    results = {
        s: {"after": {**before, "episodes": 40, "solved": 0.15 + s / 10, "reward": 0.35 + s / 10,
                      "solved_by_task": {"t1": 0.3, "t2": s / 10},
                      "by_episode": {"t1#0": {"reward": 2.0, "solved": 1.0}, "t1#1": {"reward": 2.0, "solved": 1.0},
                                     "t2#0": {"reward": float(s), "solved": 0.0}}},
            "metrics": f"metrics-seed{s}.jsonl"}
        for s in (0, 1)
    }  # fmt: skip
    args = argparse.Namespace(eval_split="test", eval_samples=4, seeds="0,1")
    screening = {"samples": 4, "solved_by_task": {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.5}, "kept": ["a", "d"]}
    path = report.write(tmp_path, args, before, results, {"SFT": 61.0, "GRPO": 250.0}, 400.0, screening)
    text = path.read_text()
    assert "GRPO trained on the 2 of 4 tasks it solved sometimes but not always" in text
    assert "| 0.50 | yes | a, d |" in text and "| 1.00 | no | b |" in text and "| 0.00 | no | c |" in text
    assert "| before GRPO (the SFT model) | 80 | 0.250 ± 0.030 | 0.050 ± 0.040 | 0.200 | 0.500 |" in text
    assert "| after GRPO, seed 1 | 40 | 0.450 ± 0.030 | 0.250 ± 0.040 |" in text
    # pooled over seeds: means 0.40 and 0.20, errors sqrt(2 * (0.03 * 40) ** 2) / 80
    assert "| after GRPO, all seeds | 80 | 0.400 ± 0.021 | 0.200 ± 0.028 |" in text
    assert "reward +0.150 ± 0.037; solved +0.150 ± 0.049. Seeds whose held-out reward rose: 2 of 2." in text
    assert "| t2 | 0.00 | 0.00 | 0.10 |" in text
    # pairs t1#0, t1#1, t2#0 (t2#1 was not evaluated after); reward diffs 1.0, 0.0, 0.5 (mean of seeds 0 and 1)
    assert "over the 3 (task, sample) pairs" in text and "reward +0.500 ± 0.289; solved +0.333 ± 0.333." in text
    # training reward 0.1 s + seed: slope 0.1 in both seeds; pooled, the seeds' offset of 1 is residual
    assert ("+0.1000 ± 0.1826 per step (+0.5 standard errors), from 0.60 at step 1. Per seed: seed 0 +0.100; "
            "seed 1 +0.100.") in text  # fmt: skip
    assert "| SFT | 61 |" in text and "Total 400 s." in text
    assert "rollouts 24.0 s, weight sync 0.8 s, training 15.2 s" in text  # 4 steps of 10 s: 6 rollout, 0.2 sync
    assert "waiting for the model 2.0 s, per episode: agent work (tools) 3.0 s" in text  # agent seconds exclude it
    for name in ("reward.png", "rates.png", "episodes_per_hour.png", "tool_calls.png", "held_out.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![{name}]({name})" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["total_seconds"] == 400.0 and saved["screening"]["kept"] == ["a", "d"]


def test_grpo_trains_on_the_tasks_the_sft_model_solves_sometimes():
    from code_repair import demo

    assert demo.screen({"a": 0.25, "b": 1.0, "c": 0.0, "d": 0.75}) == ["a", "d"]
    assert demo.screen({"a": 0.25, "b": 1.0, "c": 0.0}) == ["a", "b", "c"]  # fewer than two: every task
