"""Rollouts that do not wait for the trainer: N GRPO-shaped steps, synchronous against `max_staleness` 1 and 2.

Setup:  make install
Usage:  python benchmarks/bench_async.py [--steps 8] [--batch 8] [--train-seconds 3] [--out results.json]

Real parts: `trl vllm-serve-async` with 2 CPU replicas of the tiny model, `AgentRollout`, a weight sync through the
gateway after every step (`ServerClient.update_weights`, the shm transfer), agents talking to the session URLs. The
trainer is `FixedCostTrainer`, a stand-in with what `AgentRollout` reads from upstream `GRPOTrainer` (`args`,
`state`, `get_train_dataloader`) whose optimizer step costs a fixed `--train-seconds` of sleep, so trainer and engine
do not compete for this machine's 2 cores and the overlap is what is measured. Each agent makes one short model
call, works for a heavy-tailed time (Pareto, alpha 1.2, at least 0.4 s, at most 30 s, fixed per task by the seed, so
every mode runs the same mix), then makes a second call.

Per mode: steps per hour, the trainer's idle share (time inside the rollout call / wall), the engine's idle share
(wall time with no model call in flight), sync seconds (with turns in flight when k >= 1: the gateway waits for
them, then pauses the replicas), staleness (mean / max versions behind, per row) and the counts that say nothing
was dropped (episodes trained on = started, misses, discarded, unused).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from trl.agents import AgentRollout, ServerClient
from trl.agents.testing.servers import API_TOKEN, serve_async
from trl.agents.tiny_model import build


class Calls:
    """Model calls in flight over time (the engine is busy while at least one is)."""

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def add(self, start: float, end: float) -> None:
        with self.lock:
            self.intervals.append((start, end))

    def busy(self, start: float, end: float) -> float:
        total, last = 0.0, start
        for a, b in sorted(self.intervals):
            a, b = max(a, last), min(b, end)
            if b > a:
                total, last = total + b - a, b
        return total


def make_agent(calls: Calls, started: list[str]):
    import openai

    def agent(example: dict, base_url: str) -> dict:
        started.append(base_url.rstrip("/").split("/")[-2])
        client = openai.OpenAI(base_url=base_url, api_key="-", timeout=120, max_retries=0)
        messages = list(example["prompt"])
        for turn in range(2):
            t0 = time.monotonic()
            reply = client.chat.completions.create(model=example["model"], messages=messages, max_tokens=4)
            calls.add(t0, time.monotonic())
            messages += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                         {"role": "user", "content": "Go on."}]  # fmt: skip
            if turn == 0:
                time.sleep(example["work"])  # the agent's own work: tools, tests, thinking
        return {"work": example["work"]}

    return agent


class FixedCostTrainer:
    """What `AgentRollout` reads from `GRPOTrainer`, with an optimizer step of fixed cost (sleep)."""

    def __init__(self, rows: list[dict], batch: int, steps: int):
        self.args = SimpleNamespace(steps_per_generation=1, num_iterations=1, gradient_accumulation_steps=1,
                                    max_completion_length=4096, vllm_importance_sampling_correction=False)  # fmt: skip
        self.state = SimpleNamespace(global_step=0, max_steps=steps)
        self.rows, self.batch = rows, batch
        self.processing_class = None

    def get_train_dataloader(self):
        batches = [list(range(i, i + self.batch)) for i in range(0, len(self.rows), self.batch)]
        return SimpleNamespace(dataset=self.rows, batch_sampler=batches)

    def batches(self):
        for indices in self.get_train_dataloader().batch_sampler:
            yield [self.rows[i]["prompt"] for i in indices]


def run_mode(url: str, model_dir: str, model, k: int, args) -> dict:
    rng = random.Random(args.seed)
    work = [min(30.0, 0.4 * rng.paretovariate(1.2)) for _ in range(args.steps * args.batch)]
    rows = [{"prompt": [{"role": "user", "content": f"Task {i}"}], "model": model_dir, "work": w}
            for i, w in enumerate(work)]  # fmt: skip
    calls, started = Calls(), []
    client = ServerClient(url, api_token=API_TOKEN, timeout=300)
    client.update_weights(model)
    trainer = FixedCostTrainer(rows, args.batch, args.steps)
    rollout = AgentRollout(make_agent(calls, started), client, dataset=rows, max_concurrency=args.concurrency,
                           max_staleness=k, timeout=120, progress=False)  # fmt: skip
    waiting, syncs, staleness = 0.0, [], []
    t0 = time.monotonic()
    for step, prompts in zip(range(args.steps), trainer.batches(), strict=False):
        trainer.state.global_step = step
        w0 = time.monotonic()
        rollout(prompts, trainer)
        waiting += time.monotonic() - w0
        staleness.append((rollout.last_metrics.get("agent/staleness/row_mean", 0.0),
                          rollout.last_metrics.get("agent/staleness/row_max", 0)))  # fmt: skip
        time.sleep(args.train_seconds)  # the optimizer step
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
        s0 = time.monotonic()
        client.update_weights(model)
        syncs.append(time.monotonic() - s0)
    wall = time.monotonic() - t0
    rollout.close()
    client.close()
    totals = rollout.totals
    return {
        "max_staleness": k,
        "wall_seconds": round(wall, 2),
        "steps_per_hour": round(3600 * args.steps / wall, 1),
        "trainer_idle_share": round(waiting / wall, 3),
        "engine_idle_share": round(1 - calls.busy(t0, t0 + wall) / wall, 3),
        "sync_seconds_mean": round(statistics.mean(syncs), 3),
        "sync_seconds_max": round(max(syncs), 3),
        "staleness_row_mean": round(statistics.mean(s[0] for s in staleness), 3),
        "staleness_row_max": max(s[1] for s in staleness),
        "episodes_trained": totals["episodes"],
        "episodes_started": len(started),
        "failures": sum(v for key, v in totals.items() if key.startswith("failures/")),
        "prediction_misses": totals["async/prediction_misses"],
        "episodes_discarded": totals["async/episodes_discarded"],
        "episodes_unused": totals["async/episodes_unused"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="episodes per step")
    parser.add_argument("--concurrency", type=int, default=24, help="episodes at once (all batches in flight)")
    parser.add_argument("--train-seconds", type=float, default=3.0, help="cost of one optimizer step")
    parser.add_argument("--modes", default="0,1,2", help="max_staleness values to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-async-"))
    model_dir = str(build(work / "tiny"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results = []
    with serve_async(model_dir, work / "logs") as server:
        for k in (int(m) for m in args.modes.split(",")):
            result = run_mode(server.url, model_dir, model, k, args)
            results.append(result)
            print(json.dumps(result), flush=True)
    base = results[0]["steps_per_hour"]
    print(f"\n{'k':>2} {'steps/h':>8} {'speedup':>8} {'trainer idle':>13} {'engine idle':>12} {'sync s':>7} "
          f"{'stale mean/max':>15} {'trained/started':>16}")  # fmt: skip
    for r in results:
        print(f"{r['max_staleness']:>2} {r['steps_per_hour']:>8} {r['steps_per_hour'] / base:>7.2f}x "
              f"{r['trainer_idle_share']:>13.1%} {r['engine_idle_share']:>12.1%} {r['sync_seconds_mean']:>7.2f} "
              f"{r['staleness_row_mean']:>8.2f}/{r['staleness_row_max']:<6} "
              f"{r['episodes_trained']:>7}/{r['episodes_started']:<8}")  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
