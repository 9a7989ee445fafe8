"""The demo report from a run folder: every plot is written, and the tables carry the run's numbers."""

from __future__ import annotations

import argparse
import json

import report


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
    summary = {"reward": 0.25, "similarity": 0.2, "solved": 0.05, "non_empty": 0.5, "episodes": 40}
    results = {
        s: {"before": summary, "after": {**summary, "solved": 0.15 + s / 10}, "metrics": f"metrics-seed{s}.jsonl"}
        for s in (0, 1)
    }
    args = argparse.Namespace(eval_split="test", eval_samples=4, seeds="0,1")
    path = report.write(tmp_path, args, results, {"SFT": 61.0, "GRPO": 250.0}, 400.0)
    text = path.read_text()
    assert "| 0 | 0.250 | 0.250 | 0.200 | 0.200 | 0.050 | 0.150 |" in text
    assert "| mean ± sd |" in text and "0.200 ± 0.050" in text  # solved after: 0.15 and 0.25
    assert "| SFT | 61 |" in text and "Total 400 s." in text
    assert "rollouts 24.0 s, weight sync 0.8 s, training 15.2 s" in text  # 4 steps of 10 s: 6 rollout, 0.2 sync
    for name in ("reward.png", "rates.png", "episodes_per_hour.png", "tool_calls.png", "held_out.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![{name}]({name})" in text
    assert json.loads((tmp_path / "results.json").read_text())["total_seconds"] == 400.0
