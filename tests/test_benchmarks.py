"""The GPU benchmark scripts run end to end on CPU (`--tiny`), so they still work when a GPU machine is lent: every
variant trains (parameters change), both rollout paths see the same tokens, the exported bytes are all the model's
bytes, and `grpo.py --replay` trains under 2 processes. Timings are not checked here (see benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


BENCH = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str, timeout: float = 600) -> None:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_trainer_bench_runs_ours_and_upstream_on_the_same_tokens(tmp_path):
    out = tmp_path / "trainer.json"
    run("bench_trainer.py", "--tiny", "--variants", "pairs,fullonly", "--out", str(out))
    results = json.loads(out.read_text())["results"]
    assert [r["path"] for r in results] == ["ours", "upstream"]
    assert all(r["status"] == "ok" and r["params_changed"] and r["tokens_per_second"] > 0 for r in results)
    assert results[0]["step_tokens"] == results[1]["step_tokens"]  # the same batches through both paths
    assert results[0]["loss"] == results[1]["loss"]


def test_weight_export_bench_packs_every_byte(tmp_path):
    out = tmp_path / "export.json"
    run("bench_weight_export.py", "--tiny", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {(r["case"], r["packer"]) for r in rows} == {
        (case, packer) for case in ("plain", "lora r=32 merged") for packer in ("copy per tensor", "cat")
    }
    assert all(r["export_s"] > 0 and r["floor_s"] > 0 for r in rows)


def test_multi_process_bench_trains_grpo_script_on_replayed_episodes(tmp_path):
    out = tmp_path / "multi.json"
    run("bench_multi_gpu.py", "--tiny", "--out", str(out))
    (result,) = json.loads(out.read_text())["results"]
    assert result["status"] == "ok" and result["steps"] == 3 and result["params_changed"] > 0.5
