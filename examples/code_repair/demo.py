"""`make demo`: the whole loop on a CPU, end to end, with the evidence left in `runs/<run-name>/`.

1. the base model: the shipped tiny coder (`tiny_coder.py`: the tiny model pre-trained to copy a hint into tool
   calls; `--model tiny` builds the random tiny model instead, `--model M` takes any causal LM) and the offline toy
   suite (30 training tasks, 10 held out);
2. expert trajectories with the scripted model (`scripted_model.py`; from the tiny coder, for the 10 training tasks
   it was pre-trained on), then SFT through the masking collator (`sft.py`);
3. `trl vllm-serve-async` on the SFT model;
4. held-out evaluation of the SFT model (once: every seed starts from it); screening of the training tasks (the SFT
   model on each: GRPO keeps those it solves sometimes but not always, the only ones whose groups have an advantage);
   then per seed: GRPO with the coding agent, diff and tests-pass rewards and a weight sync after every step
   (`grpo.py`, one process or under `accelerate launch`), and the held-out evaluation again, same sampling settings
   (every episode kept in `episodes/`);
5. `report.md` (settings, seeds, before/after table with standard errors, per-task table, time split) and PNG plots
   next to `metrics*.jsonl`.

Not here: anything the scripts it calls do (see them). Ctrl-C stops every child process (server, trainer).

Usage (defaults: the tiny coder, the toy suite, seeds 0,1,2, 8 GRPO steps of 16 episodes (2 tasks x 8) each,
temperature 1.3):

    python examples/code_repair/demo.py [--run-name NAME] [--seeds 0,1,2] [--grpo-steps 8]
        [--model tiny-coder|tiny|PATH_OR_HUB_NAME] [--dataset SWE-Gym/SWE-Gym-Lite] [--accelerate-config FILE]
        [--data-parallel-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from code_repair import report
from code_repair.agent import AgentConfig, RepairAgent
from code_repair.data import Workspaces, command_env, task_dataset
from code_repair.rewards import TestsPassReward, unified_diff_similarity
from trl.agents import ServerError


HERE = Path(__file__).resolve().parent
SERVE_FLAGS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--max-model-len", "4096",
               "--dtype", "float32"]  # fmt: skip


class Timer:
    """Wall time per phase, printed as each phase starts and ends."""

    def __init__(self):
        self.start = time.monotonic()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        print(f"\n==> [{time.monotonic() - self.start:6.0f} s] {name}", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.phases[name] = self.phases.get(name, 0.0) + seconds
            print(f"    {name}: {seconds:.0f} s", flush=True)


def run_child(argv: list[str], log: Path) -> None:
    """Run a script to completion in its own process group, its output shown and kept in `log`; Ctrl-C kills it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            for line in proc.stdout:
                out.write(line)
                if not line.startswith(("fetching ", "fetched ")):
                    sys.stdout.write("    " + line)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed (exit {code}); see {log}")


def evaluate(
    rows,
    samples: int,
    tag: str,
    keep: Path,
    *,
    client,
    workspaces,
    config: AgentConfig,
    concurrency: int = 8,
    test_seconds: float = 60,
) -> dict:
    """The agent on each task of `rows` `samples` times: mean diff similarity, solved (tests pass), non-empty, with
    standard errors, and the solved rate per task. Episode k of the i-th task samples with seed 1000 i + k in every
    evaluation of `rows`, so two evaluations pair up episode by episode (`by_episode`: reward and solved per
    `task#k`; `report.paired_change`). Every episode (scores, stop reason, diff, messages) is written to `keep`
    (JSONL)."""
    agent = RepairAgent(workspaces, config, request_timeout=120)
    tests_pass = TestsPassReward(workspaces, seconds=test_seconds)
    jobs = [(row, i, k) for i, row in enumerate(rows) for k in range(samples)]

    def one(job):
        row, i, k = job
        sid = f"{tag}-{i}-{k}"
        try:
            result = agent.episode(row, client.session_url(sid), seed=1000 * i + k)
        except Exception as exc:  # counted as a failed episode (score 0), never silently dropped
            print(f"    {sid}: episode failed: {type(exc).__name__}: {exc}", flush=True)
            return {"instance_id": row["instance_id"], "sample": k, "similarity": 0.0, "solved": 0.0,
                    "non_empty": 0.0, "stop_reason": "error", "failed": 1.0,
                    "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        finally:
            try:
                client.close_session(sid)
            except ServerError as exc:
                if exc.status != 404:  # 404: the episode failed before its first turn created the session
                    raise
        return {
            "instance_id": row["instance_id"],
            "sample": k,
            "similarity": unified_diff_similarity(result.diff, row["patch"]),
            "solved": tests_pass.score(row, result.diff),
            "non_empty": float(bool(result.diff.strip())),
            "stop_reason": result.stop_reason,
            "failed": 0.0,
            "diff": result.diff,
            "messages": result.messages,
        }

    with ThreadPoolExecutor(concurrency) as pool:
        episodes = list(pool.map(one, jobs))
    for e in episodes:
        e["reward"] = e["similarity"] + e["solved"]  # the GRPO reward: similarity + tests, weight 1 each
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    summary = {}
    for k in report.HELD_OUT_KEYS:  # the mean over episodes and its standard error
        summary[k] = mean(e[k] for e in episodes)
        summary[f"{k}_se"] = stdev(e[k] for e in episodes) / math.sqrt(len(episodes)) if len(episodes) > 1 else 0.0
    summary["failed_episodes"] = sum(e["failed"] for e in episodes)
    summary["episodes"] = len(episodes)
    print(f"    {tag}: " + ", ".join(f"{k} {summary[k]:.3f}" for k in (*report.HELD_OUT_KEYS, "episodes")), flush=True)
    summary["by_episode"] = {
        f"{e['instance_id']}#{e['sample']}": {"reward": e["reward"], "solved": e["solved"]} for e in episodes
    }
    summary["solved_by_task"] = {
        task: mean(e["solved"] for e in episodes if e["instance_id"] == task)
        for task in sorted({e["instance_id"] for e in episodes})
    }
    return summary


def screen(solved_by_task: dict[str, float]) -> list[str]:
    """The training tasks GRPO learns from: those the SFT model solved sometimes but not always. A task it always or
    never solves gives every episode of a group the same reward, hence no advantage and no gradient. All tasks when
    fewer than two qualify."""
    kept = [task for task, rate in solved_by_task.items() if 0 < rate < 1]
    return kept if len(kept) >= 2 else list(solved_by_task)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--run-name", default=time.strftime("demo-%Y%m%d-%H%M%S"))
    add("--runs-dir", type=Path, default=Path("runs"))
    add("--model", default="tiny-coder", help="'tiny-coder' (shipped, `tiny_coder.py`), 'tiny' (the random tiny "
        "model, built here), or any causal LM path or Hub name")  # fmt: skip
    add("--dataset", default="toy", help="'toy' or tasks in SWE-Gym form (train split trains, test split evaluates)")
    add("--eval-split", default="test")
    add("--accelerate-config", default=None, help="run GRPO under `accelerate launch --config_file`")
    add("--data-parallel-size", type=int, default=1, help="vLLM replicas behind the gateway")
    add("--seeds", default="0,1,2", help="comma-separated GRPO seeds (the SFT model is shared)")
    add(
        "--expert-tasks",
        default=None,
        help="comma-separated training tasks the scripted expert demonstrates for "
        "SFT (default: all; from the tiny coder: the 10 it was pre-trained on, so 20 reach GRPO unseen)",
    )
    add("--sft-steps", type=int, default=None, help="default: 10 from the tiny coder, else 120")
    add("--sft-learning-rate", type=float, default=None, help="default: 1e-4 from the tiny coder, else 3e-3")
    add("--grpo-steps", type=int, default=8)
    add("--grpo-learning-rate", type=float, default=2e-4)
    add("--num-generations", type=int, default=8)
    add("--batch-size", type=int, default=16, help="episodes per GRPO step")
    add("--screen-samples", type=int, default=3, help="episodes per training task to find the tasks the SFT model "
        "solves sometimes but not always: GRPO trains on those (0: on every training task)")  # fmt: skip
    add("--eval-samples", type=int, default=6, help="episodes per held-out task after GRPO, per seed")
    add(
        "--before-samples",
        type=int,
        default=6,
        help="episodes per held-out task before GRPO (once: every seed starts from the same SFT model)",
    )
    add("--concurrency", type=int, default=16, help="agent episodes at once (GRPO rollouts and evaluation)")
    add("--test-seconds", type=float, default=10, help="deadline of one tests-pass check (toy tests take 0.2 s; "
        "a patch that makes them loop forever costs this much)")  # fmt: skip
    add("--temperature", type=float, default=1.3, help="sampling temperature, training and evaluation alike")
    add("--tool-limit", type=int, default=6)
    add("--token-limit", type=int, default=600)
    add("--response-limit", type=int, default=160)
    add("--fuzzy-match", type=float, default=None, help="the agent's apply_patch fuzzy threshold (see agent.py)")
    add("--cache-dir", default=os.path.expanduser("~/.cache/trl-agents/code_repair"))
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    run = (args.runs_dir / args.run_name).resolve()
    run.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    seeds = [int(s) for s in args.seeds.split(",")]
    py = sys.executable

    with timer.phase("model and tasks"):
        model, expert_tasks = args.model, args.expert_tasks
        if model == "tiny-coder":
            from code_repair.tiny_coder import SHIPPED, shipped_build

            model, built = str(SHIPPED), shipped_build()
            expert_tasks = expert_tasks or ",".join(built["seen_tasks"])
            print(f"    the tiny coder ({SHIPPED}): held-out exact match of its tool calls {built['exact_match']}")
        elif model == "tiny":
            from trl.agents.tiny_model import build

            model = str(build(run / "base-model"))
        steps, lr = (10, 1e-4) if args.model == "tiny-coder" else (120, 3e-3)  # a light touch on the coder
        sft_steps = args.sft_steps if args.sft_steps is not None else steps
        sft_lr = args.sft_learning_rate if args.sft_learning_rate is not None else lr
        common = ["--dataset", args.dataset, "--cache-dir", args.cache_dir]
    with timer.phase("SFT warm start (scripted-expert trajectories, masking collator)"):
        sft_dir = run / "sft-model"
        run_child([py, str(HERE / "sft.py"), "--model", model, *common, "--write-expert", str(run / "expert.jsonl"),
                   "--trajectories", str(run / "expert.jsonl"), "--output-dir", str(sft_dir),
                   "--max-steps", str(sft_steps), "--learning-rate", str(sft_lr),
                   "--per-device-train-batch-size", "8", "--num-train-epochs", "1000", "--use-cpu",
                   *(["--tasks", expert_tasks] if expert_tasks else [])],
                  run / "logs" / "sft.log")  # fmt: skip

    from trl.agents import ServerClient
    from trl.agents.server.process import ServeAsyncProcess

    eval_rows = list(task_dataset(args.dataset, args.eval_split, args.cache_dir))
    workspaces = Workspaces(args.cache_dir, env=command_env(args.dataset))
    token = os.urandom(8).hex()
    server = ServeAsyncProcess(
        str(sft_dir), name="vllm-serve-async", log_path=run / "logs" / "server.log", startup_timeout=600,
        args=["--data-parallel-size", str(args.data_parallel_size), "--api-token", token, "--log-dir",
              str(run / "logs" / "server"), *SERVE_FLAGS],
    )  # fmt: skip
    agent_config = AgentConfig(model=str(sft_dir), tool_limit=args.tool_limit, token_limit=args.token_limit,
                               time_limit=60, response_limit=args.response_limit, temperature=args.temperature,
                               fuzzy_match=args.fuzzy_match)  # fmt: skip
    results: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        with timer.phase("start trl vllm-serve-async"):
            stack.enter_context(server)
        client = stack.enter_context(ServerClient(server.url, api_token=token, timeout=300))
        run_eval = functools.partial(evaluate, client=client, workspaces=workspaces, config=agent_config,
                                     concurrency=args.concurrency, test_seconds=args.test_seconds)  # fmt: skip
        with timer.phase("held-out evaluation before GRPO (the SFT model, shared by every seed)"):
            before = run_eval(eval_rows, args.before_samples, "pre", run / "episodes" / "held-out-before.jsonl")
        screening = None
        if args.screen_samples:
            with timer.phase("screening the training tasks (the SFT model on each; GRPO keeps the mixed ones)"):
                train_rows = list(task_dataset(args.dataset, "train", args.cache_dir))
                found = run_eval(train_rows, args.screen_samples, "screen", run / "episodes" / "screening.jsonl")
                screening = {"samples": args.screen_samples, "solved_by_task": found["solved_by_task"],
                             "kept": screen(found["solved_by_task"])}  # fmt: skip
                print(f"    GRPO trains on {len(screening['kept'])} of {len(train_rows)} training tasks")
        for seed in seeds:
            metrics = run / f"metrics-seed{seed}.jsonl" if len(seeds) > 1 else run / "metrics.jsonl"
            metrics.unlink(missing_ok=True)
            with timer.phase(f"seed {seed}: GRPO ({args.grpo_steps} steps, weight sync after each)"):
                if seed != seeds[0]:
                    client.update_weights(_load(sft_dir))  # every seed starts from the SFT weights
                grpo_argv = [str(HERE / "grpo.py"), "--model", str(sft_dir), *common, "--server-url", server.url,
                             "--api-token", token, "--output-dir", str(run / f"grpo-seed{seed}"),
                             "--metrics-file", str(metrics), "--rewards", "similarity,tests",
                             "--num-generations", str(args.num_generations),
                             "--per-device-train-batch-size", str(args.batch_size), "--max-steps", str(args.grpo_steps),
                             "--learning-rate", str(args.grpo_learning_rate), "--seed", str(seed),
                             "--tool-limit", str(args.tool_limit), "--token-limit", str(args.token_limit),
                             "--response-limit", str(args.response_limit), "--time-limit", "60",
                             "--test-seconds", str(args.test_seconds),
                             "--temperature", str(args.temperature), "--max-completion-length", "4096",
                             "--max-concurrency", str(args.concurrency), "--use-cpu"]  # fmt: skip
                if screening:
                    grpo_argv += ["--tasks", ",".join(screening["kept"])]
                if args.fuzzy_match is not None:
                    grpo_argv += ["--fuzzy-match", str(args.fuzzy_match)]
                launcher = [py, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config] \
                    if args.accelerate_config else [py]  # fmt: skip
                run_child([*launcher, *grpo_argv], run / "logs" / f"grpo-seed{seed}.log")
            with timer.phase(f"seed {seed}: held-out evaluation after GRPO"):
                keep = run / "episodes" / f"held-out-after-seed{seed}.jsonl"
                after = run_eval(eval_rows, args.eval_samples, f"post{seed}", keep)
            results[seed] = {"after": after, "metrics": str(metrics.name)}

    report.write(run, args, before, results, timer.phases, time.monotonic() - timer.start, screening)
    print(f"\n==> done in {time.monotonic() - timer.start:.0f} s: {run / 'report.md'}")
    return run


def _load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: every child process was stopped", file=sys.stderr)
        sys.exit(130)
