"""`AgentRollout(max_staleness=k)` with stock `GRPOTrainer` through a real gateway: episodes of the next batch run
while the trainer trains, each reaches exactly one batch, no turn is more than k versions behind, a sync with turns
in flight loses none, a wrong prediction falls back and is counted, and upstream's correction sees the rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl import GRPOConfig, GRPOTrainer
from trl.agents import AgentRollout, ServerClient, WeightSyncCallback
from trl.agents.testing.servers import API_TOKEN


HERE = Path(__file__).parent


class TwoTurnAgent:
    """Two short turns with a pause between them (long enough for a training step and a sync to land there);
    remembers every session it ran."""

    def __init__(self):
        self.sessions: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, example: dict, base_url: str) -> dict:
        with self._lock:
            self.sessions.append(base_url.rstrip("/").split("/")[-2])  # .../sessions/<id>/v1
        client = openai.OpenAI(base_url=base_url, api_key="-", timeout=60, max_retries=0)
        messages = list(example["prompt"])
        first = client.chat.completions.create(model=example["model"], messages=messages, max_tokens=6)
        time.sleep(example["pause"])
        messages += [{"role": "assistant", "content": first.choices[0].message.content or ""},
                     {"role": "user", "content": "Go on."}]  # fmt: skip
        second = client.chat.completions.create(model=example["model"], messages=messages, max_tokens=6)
        return {"answer": second.choices[0].message.content or ""}


def answer_length(completions, answer, **kwargs) -> list[float]:
    return [float(len(a)) for a in answer]


def tasks(model_dir: str, n: int) -> Dataset:
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"Task {i}: say something."}] for i in range(n)],
        "model": [model_dir] * n,
        "pause": [2.0] * n,
    })  # fmt: skip


def grpo_args(tmp_path, **overrides) -> GRPOConfig:
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=256,
                  learning_rate=5e-3, beta=0.0, max_steps=4, logging_steps=1, report_to=[], use_cpu=True,
                  save_strategy="no", seed=0)  # fmt: skip
    return GRPOConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def client(gateway):
    with ServerClient(gateway.url, api_token=API_TOKEN, timeout=120) as client:
        yield client


def train(client, model_dir, tmp_path, max_staleness: int, loader=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    client.update_weights(model)
    data, agent = tasks(model_dir, 8), TwoTurnAgent()
    rollout = AgentRollout(agent, client, dataset=data, max_concurrency=8, max_staleness=max_staleness,
                           record_to=tmp_path / "episodes.jsonl")  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=answer_length, args=grpo_args(tmp_path), train_dataset=data,
                          rollout_func=rollout, callbacks=[WeightSyncCallback(client)])  # fmt: skip
    if loader is not None:  # a custom dataloader the prediction cannot follow (what a custom sampler would be)
        trainer.get_train_dataloader = loader(trainer)
    trainer.train()
    rollout.close()
    consumed = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    steps = [entry for entry in trainer.state.log_history if "agent/episodes" in entry]
    return trainer, rollout, agent, consumed, steps


def test_one_batch_ahead_reaches_each_batch_once_within_one_version(gateway, client, tiny_model_dir, tmp_path):
    trainer, rollout, agent, consumed, steps = train(client, tiny_model_dir, tmp_path, max_staleness=1)

    consumed_ids = [record["session_id"] for record in consumed]
    assert len(consumed_ids) == 16 and len(set(consumed_ids)) == 16  # 4 steps x 4 episodes, none twice
    assert sorted(agent.sessions) == sorted(consumed_ids)  # every episode started reached exactly one batch
    assert rollout.totals["async/prediction_misses"] == 0 and rollout.totals["async/episodes_discarded"] == 0
    assert rollout.totals["async/episodes_unused"] == 0  # none started past max_steps
    assert not any(k.startswith("failures/") and v for k, v in rollout.totals.items())  # nothing lost in syncs
    assert len(steps) == 4 and all(step["agent/staleness/row_max"] <= 1 for step in steps)
    assert all(step["agent/staleness/over_bound"] == 0 for step in steps)
    assert max(step["agent/staleness/row_max"] for step in steps) == 1  # batches really ran a version ahead
    # syncs happened while turns were in flight: some episodes have turns of two versions, and every turn counted
    versions = [{turn["policy_version"] for turn in r["trajectory"]["segments"][-1]["turns"]} for r in consumed]
    assert all(len(r["trajectory"]["segments"][-1]["turns"]) == 2 for r in consumed)
    assert any(len(v) == 2 for v in versions)
    assert steps[1]["agent/async/batches_ahead_max"] == 1
    # upstream's off-policy correction ran on the engine's logprobs
    assert trainer.use_vllm and all("sampling/importance_sampling_ratio/mean" in step for step in steps)
    # and what it masked is logged each step from the second (the monitor starts inside the first batch's call)
    assert all(0 <= step["agent/correction/sequence_rows"] <= 1 for step in steps[1:])
    assert [behind for _, behind, _, _ in rollout.correction.last_rows] == rollout.last_staleness
    assert sum(tokens for tokens, *_ in rollout.correction.last_rows) == steps[-1]["agent/tokens_sampled"]


def test_synchronous_rollout_starts_nothing_ahead(gateway, client, tiny_model_dir, tmp_path):
    trainer, rollout, agent, consumed, steps = train(client, tiny_model_dir, tmp_path, max_staleness=0)
    assert rollout._plan is None and not trainer.use_vllm  # today's path: nothing planned, upstream untouched
    assert sorted(agent.sessions) == sorted(r["session_id"] for r in consumed) and len(consumed) == 16
    assert all(step["agent/staleness/row_max"] == 0 for step in steps)


def test_a_wrong_prediction_runs_the_batch_now_and_is_counted(gateway, client, tiny_model_dir, tmp_path):
    """The plan's dataloader yields an extra batch after the first one: the trainer then asks for another batch
    than the one started ahead, which is discarded (counted); the plan realigns and predicts the rest."""

    def loader(trainer):
        original, calls = trainer.get_train_dataloader, []

        def get_train_dataloader():  # the trainer's own call (the first) gets the real one, the plan's the other
            calls.append(1)
            real = original()
            if len(calls) == 1:
                return real
            batches = [list(indices) for indices in real.batch_sampler]
            wrong = [batches[1][0]] * 2 + [batches[2][0]] * 2  # tasks the trainer pairs differently

            class Shifted:
                dataset = real.dataset
                batch_sampler = [batches[0], wrong, *batches[1:]]

            return Shifted()

        return get_train_dataloader

    trainer, rollout, agent, consumed, steps = train(client, tiny_model_dir, tmp_path, max_staleness=1, loader=loader)
    assert rollout.totals["async/prediction_misses"] == 1 and rollout.totals["async/episodes_discarded"] == 4
    consumed_ids = {record["session_id"] for record in consumed}
    assert len(consumed_ids) == 16 and len(agent.sessions) == 20  # 4 started for the wrong batch, never trained on
    assert not any(k.startswith("failures/") and v for k, v in rollout.totals.items())


def test_two_processes_one_batch_ahead(gateway, client, tiny_model_dir, tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    env = {**os.environ, "TRL_AGENTS_TEST_OUT": str(out), "OMP_NUM_THREADS": "1", "MAX_STALENESS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
               str(HERE / "scripts" / "grpo_two_processes.py"), gateway.url, API_TOKEN, tiny_model_dir, str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    started = [set(r["started"]) for r in ranks]
    assert all(started) and not started[0] & started[1]  # each rank's episodes are its own
    for rank in ranks:
        assert len(rank["started"]) == len(set(rank["started"])) == 2 * 4  # 2 steps x 4 per rank, none twice
        assert rank["totals"]["episodes"] == 2 * 4 * 2  # summed over both ranks
        assert rank["totals"].get("async/prediction_misses", 0) == rank["totals"].get("async/episodes_unused", 0) == 0
