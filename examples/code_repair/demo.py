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
   (`grpo.py`, one process or under `accelerate launch`; the recipe trains the tiny coder's final norm from the
   better-than-average episodes, see `configs/grpo_demo.yaml`), and the held-out evaluation again, same sampling
   settings (every episode kept in `episodes/`, GRPO's with their tokens, for `grpo.py --replay`);
5. `report.md` (settings, seeds, before/after table with standard errors, per-task table, time split) and PNG plots
   next to `metrics*.jsonl`.

Not here: anything the scripts it calls do (see them). Ctrl-C or `kill` (SIGTERM) stops every child process (server,
trainer).

The settings of SFT and GRPO are the recipes `configs/sft_demo.yaml` and `configs/grpo_demo.yaml` (`--sft-recipe`,
`--grpo-recipe`), which `sft.py` and `grpo.py` read with `--config` as any user would; evaluation uses the GRPO
recipe's agent and sampling settings, and the demo's flags below override recipe values. Usage (defaults: the tiny
coder, the toy suite, seeds 0,1,2, and from the recipe 8 GRPO steps of 16 episodes (2 tasks x 8), temperature 1.3):

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

from code_repair import grpo, report
from code_repair.agent import AgentConfig, RepairAgent
from code_repair.data import task_dataset
from code_repair.rewards import TestsPassReward, unified_diff_similarity
from trl.agents import ServerClient, ServerError


HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
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
    add("--sft-recipe", type=Path, default=CONFIGS / "sft_demo.yaml", help="sft.py's recipe")
    add("--grpo-recipe", type=Path, default=CONFIGS / "grpo_demo.yaml", help="grpo.py's recipe (also evaluation's "
        "agent and sampling settings)")  # fmt: skip
    add("--sft-steps", type=int, default=None, help="default: the recipe's from the tiny coder, else 120")
    add("--sft-learning-rate", type=float, default=None, help="default: the recipe's from the tiny coder, else 3e-3")
    # default None: the GRPO recipe's value (the report shows the value used)
    add("--grpo-steps", type=int, default=None)
    add("--grpo-learning-rate", type=float, default=None)
    add("--num-generations", type=int, default=None)
    add("--batch-size", type=int, default=None, help="episodes per GRPO step (the recipe trains one episode per "
        "micro-batch, so this is its gradient_accumulation_steps)")  # fmt: skip
    add("--screen-samples", type=int, default=3, help="episodes per training task to find the tasks the SFT model "
        "solves sometimes but not always: GRPO trains on those (0: on every training task)")  # fmt: skip
    add("--eval-samples", type=int, default=6, help="episodes per held-out task after GRPO, per seed")
    add(
        "--before-samples",
        type=int,
        default=6,
        help="episodes per held-out task before GRPO (once: every seed starts from the same SFT model)",
    )
    add("--concurrency", type=int, default=None, help="agent episodes at once (GRPO rollouts and evaluation)")
    add("--test-seconds", type=float, default=None, help="deadline of one tests-pass check")
    add("--temperature", type=float, default=None, help="sampling temperature, training and evaluation alike")
    add("--tool-limit", type=int, default=None)
    add("--token-limit", type=int, default=None)
    add("--response-limit", type=int, default=None)
    add("--fuzzy-match", type=float, default=None, help="the agent's apply_patch fuzzy threshold (see agent.py)")
    add("--max-staleness", type=int, default=None, help="GRPO episodes of the next step run while the trainer "
        "trains, at most this many policy versions behind (0: synchronous, the recipe's default)")  # fmt: skip
    add("--cache-dir", default=os.path.expanduser("~/.cache/trl-agents/code_repair"))
    return p


# demo flag -> the grpo.py option it overrides (None: the recipe's value)
GRPO_OVERRIDES = {
    "grpo_steps": "max_steps", "grpo_learning_rate": "learning_rate", "num_generations": "num_generations",
    "batch_size": "gradient_accumulation_steps", "temperature": "temperature", "tool_limit": "tool_limit",
    "token_limit": "token_limit", "response_limit": "response_limit", "fuzzy_match": "fuzzy_match",
    "test_seconds": "test_seconds", "concurrency": "max_concurrency", "max_staleness": "max_staleness",
}  # fmt: skip


def grpo_settings(args, model: str, output_dir: Path):
    """grpo.py's arguments for this demo (the recipe, then the demo's flags), parsed by grpo.py's own parser; the
    demo's flags are set to the values used, for the report."""
    overrides = [f"--{option}={getattr(args, flag)}" for flag, option in GRPO_OVERRIDES.items()
                 if getattr(args, flag) is not None]  # fmt: skip
    argv = ["--config", str(args.grpo_recipe), *overrides, "--dataset", args.dataset, "--cache_dir", args.cache_dir,
            "--model_name_or_path", model]  # fmt: skip
    settings = grpo.parse_args([*argv, "--output_dir", str(output_dir)])
    if args.batch_size is not None and settings.training.per_device_train_batch_size != 1:
        raise SystemExit(f"--batch-size sets gradient_accumulation_steps, the episodes per step of a recipe with one "
                         f"episode per micro-batch; {args.grpo_recipe} has per_device_train_batch_size "
                         f"{settings.training.per_device_train_batch_size}: set the recipe's values instead")  # fmt: skip
    for flag, option in GRPO_OVERRIDES.items():
        for part in settings:
            if hasattr(part, option):
                setattr(args, flag, getattr(part, option))
                break
    return argv, settings


def base_model(args, run: Path) -> tuple[str, str | None]:
    """The model SFT starts from, and the tasks the scripted expert demonstrates (None: all)."""
    if args.model == "tiny-coder":
        from code_repair.tiny_coder import SHIPPED, shipped_build

        built = shipped_build()
        print(f"    the tiny coder ({SHIPPED}): held-out exact match of its tool calls {built['exact_match']}")
        return str(SHIPPED), args.expert_tasks or ",".join(built["seen_tasks"])
    if args.model == "tiny":
        from trl.agents.tiny_model import build

        return str(build(run / "base-model")), args.expert_tasks
    return args.model, args.expert_tasks


def sft_argv(args, run: Path, model: str, expert_tasks: str | None) -> list[str]:
    """sft.py's command line: the recipe, then the demo's paths, tasks and (from a base other than the tiny coder,
    which needs only a light touch) longer training."""
    steps, lr = args.sft_steps, args.sft_learning_rate
    if args.model != "tiny-coder":
        steps, lr = steps or 120, lr or 3e-3
    expert = str(run / "expert.jsonl")
    return [str(HERE / "sft.py"), "--config", str(args.sft_recipe), "--model_name_or_path", model,
            "--dataset", args.dataset, "--cache_dir", args.cache_dir, "--write_expert", expert, "--trajectories", expert,
            "--output_dir", str(run / "sft-model"),
            *(["--max_steps", str(steps)] if steps else []), *(["--learning_rate", str(lr)] if lr else []),
            *(["--tasks", *expert_tasks.split(",")] if expert_tasks else [])]  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    run = (args.runs_dir / args.run_name).resolve()
    run.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    seeds = [int(s) for s in args.seeds.split(",")]
    with timer.phase("model and tasks"):
        model, expert_tasks = base_model(args, run)
    with timer.phase("SFT warm start (scripted-expert trajectories, masking collator)"):
        sft_dir = run / "sft-model"
        run_child([sys.executable, *sft_argv(args, run, model, expert_tasks)], run / "logs" / "sft.log")
    grpo_argv, settings = grpo_settings(args, str(sft_dir), run / "grpo")
    with contextlib.ExitStack() as stack:
        token = os.urandom(8).hex()
        with timer.phase("start trl vllm-serve-async"):
            server = stack.enter_context(_server(args, run, sft_dir, token))
        client = stack.enter_context(ServerClient(server.url, api_token=token, timeout=300))
        agent_config = settings.agent.config(str(sft_dir), settings.training.temperature, settings.training.top_p)
        run_eval = functools.partial(evaluate, client=client, workspaces=settings.task.workspaces(),
                                     config=agent_config, concurrency=settings.script.max_concurrency,
                                     test_seconds=settings.script.test_seconds)  # fmt: skip
        eval_rows = list(task_dataset(args.dataset, args.eval_split, args.cache_dir))
        with timer.phase("held-out evaluation before GRPO (the SFT model, shared by every seed)"):
            before = run_eval(eval_rows, args.before_samples, "pre", run / "episodes" / "held-out-before.jsonl")
        screening = _screen(args, run, timer, run_eval)
        results = {}
        for seed in seeds:
            metrics = run / f"metrics-seed{seed}.jsonl" if len(seeds) > 1 else run / "metrics.jsonl"
            metrics.unlink(missing_ok=True)
            with timer.phase(f"seed {seed}: GRPO ({args.grpo_steps} steps, weight sync after each)"):
                if seed != seeds[0]:
                    client.update_weights(_load(sft_dir))  # every seed starts from the SFT weights
                argv = [*grpo_argv, "--server_url", server.url, "--api_token", token, "--seed", str(seed),
                        "--output_dir", str(run / f"grpo-seed{seed}"), "--metrics_file", str(metrics),
                        "--record_to", str(run / "episodes" / f"grpo-seed{seed}.jsonl"),
                        *(["--tasks", *screening["kept"]] if screening else [])]  # fmt: skip
                launcher = ["-m", "accelerate.commands.launch", "--config_file", args.accelerate_config] \
                    if args.accelerate_config else []  # fmt: skip
                run_child(
                    [sys.executable, *launcher, str(HERE / "grpo.py"), *argv], run / "logs" / f"grpo-seed{seed}.log"
                )
            with timer.phase(f"seed {seed}: held-out evaluation after GRPO"):
                keep = run / "episodes" / f"held-out-after-seed{seed}.jsonl"
                after = run_eval(eval_rows, args.eval_samples, f"post{seed}", keep)
            results[seed] = {"after": after, "metrics": str(metrics.name)}
    report.write(run, args, before, results, timer.phases, time.monotonic() - timer.start, screening)
    print(f"\n==> done in {time.monotonic() - timer.start:.0f} s: {run / 'report.md'}")
    return run


def _server(args, run: Path, sft_dir: Path, token: str):
    from trl.agents.server.process import ServeAsyncProcess

    return ServeAsyncProcess(
        str(sft_dir), name="vllm-serve-async", log_path=run / "logs" / "server.log", startup_timeout=600,
        args=["--data-parallel-size", str(args.data_parallel_size), "--api-token", token, "--log-dir",
              str(run / "logs" / "server"), *SERVE_FLAGS],
    )  # fmt: skip


def _screen(args, run: Path, timer: Timer, run_eval) -> dict[str, Any] | None:
    """The SFT model on every training task; GRPO keeps the tasks it solves sometimes (None: screening is off)."""
    if not args.screen_samples:
        return None
    with timer.phase("screening the training tasks (the SFT model on each; GRPO keeps the mixed ones)"):
        train_rows = list(task_dataset(args.dataset, "train", args.cache_dir))
        found = run_eval(train_rows, args.screen_samples, "screen", run / "episodes" / "screening.jsonl")
        kept = screen(found["solved_by_task"])
        print(f"    GRPO trains on {len(kept)} of {len(train_rows)} training tasks")
    return {"samples": args.screen_samples, "solved_by_task": found["solved_by_task"], "kept": kept}


def _load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _stop(signum, frame):
    raise KeyboardInterrupt  # `kill` (SIGTERM) stops the children as Ctrl-C does


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: every child process was stopped", file=sys.stderr)
        sys.exit(130)
