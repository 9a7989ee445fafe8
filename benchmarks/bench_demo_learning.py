"""What a change to the demo's GRPO settings does to the held-out tasks, without redoing the rest of `make demo`.

Takes a finished demo run (its SFT model, its held-out evaluation before GRPO and, unless `--all-tasks`, the training
tasks its screening kept), starts `trl vllm-serve-async` on the SFT model, and per seed runs `grpo.py` with the
demo's recipe plus the given overrides, then the held-out evaluation with the demo's settings. Episode k of a task
samples with the same seed as in the run's evaluation before GRPO, so each seed's change is paired, episode by
episode, with that evaluation. About 4-5 minutes per seed on 2 cores (2026-12-01) instead of the whole demo.

    python benchmarks/bench_demo_learning.py runs/NAME --label lr5e-4 --seeds 0 [--all-tasks] -- --learning_rate 5e-4

Writes `runs/NAME/learning/LABEL/` (GRPO log, metrics, recorded episodes, held-out episodes, `summary.json`) and
prints one line per seed: training reward per step and the paired held-out change in solved rate with its standard
error. Not here: the SFT and the screening themselves (see `examples/code_repair/demo.py`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

from code_repair import demo, report
from code_repair.data import task_dataset
from trl.agents import ServerClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished `make demo` run folder (runs/NAME)")
    p.add_argument("--label", required=True, help="name of this setting (a folder under RUN/learning/)")
    p.add_argument("--seeds", default="0", help="comma-separated GRPO seeds")
    p.add_argument("--all-tasks", action="store_true", help="train on every training task, not the screened ones")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])  # after --: grpo.py options over the demo's recipe
    overrides = argv[split + 1 :]
    run = args.run.resolve()
    results = json.loads((run / "results.json").read_text())
    kept = [] if args.all_tasks or not results.get("screening") else ["--tasks", *results["screening"]["kept"]]
    demo_args = demo.parser().parse_args(["--run-name", run.name])
    sft = run / "sft-model"
    grpo_argv, settings = demo.grpo_settings(demo_args, str(sft), run / "grpo")
    out = run / "learning" / args.label
    (out / "logs").mkdir(parents=True, exist_ok=True)
    token = os.urandom(8).hex()
    with (
        demo._server(demo_args, out, sft, token) as server,
        ServerClient(server.url, api_token=token, timeout=300) as client,
    ):
        config = settings.agent.config(str(sft), settings.training.temperature, settings.training.top_p)
        run_eval = functools.partial(demo.evaluate, client=client, workspaces=settings.task.workspaces(),
                                     config=config, concurrency=settings.script.max_concurrency,
                                     test_seconds=settings.script.test_seconds)  # fmt: skip
        rows = list(task_dataset(demo_args.dataset, demo_args.eval_split, demo_args.cache_dir))
        summary = {}
        for seed in [int(s) for s in args.seeds.split(",")]:
            client.update_weights(demo._load(sft))  # every seed starts from the SFT weights
            started = time.monotonic()
            metrics = out / f"metrics-seed{seed}.jsonl"
            metrics.unlink(missing_ok=True)
            demo.run_child([sys.executable, str(demo.HERE / "grpo.py"), *grpo_argv, "--server_url", server.url,
                            "--api_token", token, "--seed", str(seed), "--output_dir", str(out / f"grpo-seed{seed}"),
                            "--metrics_file", str(metrics), "--record_to", str(out / f"episodes-seed{seed}.jsonl"),
                            *kept, *overrides], out / "logs" / f"grpo-seed{seed}.log")  # fmt: skip
            grpo_seconds = time.monotonic() - started
            keep = out / f"held-out-after-seed{seed}.jsonl"
            after = run_eval(rows, demo_args.eval_samples, f"post{seed}", keep)
            change = report.paired_change(results["before"], [after])  # pairs with the run's evaluation before
            change, se = change["solved"], change["solved_se"]
            rewards = [round(json.loads(line)["reward"], 3) for line in metrics.open()]
            summary[seed] = {"training_reward": rewards, "solved_after": after["solved"], "paired_change": change,
                             "paired_change_se": se, "grpo_seconds": grpo_seconds}  # fmt: skip
            print(f"{args.label} seed {seed}: training reward {rewards}; held-out solved {results['before']['solved']:.3f}"
                  f" -> {after['solved']:.3f}, paired change {change:+.3f} ± {se:.3f} ({grpo_seconds:.0f} s GRPO)", flush=True)  # fmt: skip
    (out / "summary.json").write_text(json.dumps({"overrides": overrides, "all_tasks": args.all_tasks, "seeds": summary},
                                                 indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
