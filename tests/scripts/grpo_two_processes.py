"""Run by tests/test_rollout.py and tests/test_async_rollout.py (MAX_STALENESS=1) under `accelerate launch --num_processes 2 --cpu`: 2 GRPO steps with AgentRollout,
each process writing which sessions and tasks it ran to $TRL_AGENTS_TEST_OUT/rank{N}.json.

Usage: grpo_two_processes.py GATEWAY_URL API_TOKEN MODEL_DIR OUTPUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl import GRPOConfig, GRPOTrainer
from trl.agents import AgentRollout, ServerClient, WeightSyncCallback


url, token, model_dir, output_dir = sys.argv[1:5]
tasks_seen: list[int] = []
started: list[str] = []  # session ids of the episodes this process started


def agent(example: dict, base_url: str) -> dict:
    import openai

    tasks_seen.append(example["task_id"])
    started.append(base_url.rstrip("/").split("/")[-2])
    client = openai.OpenAI(base_url=base_url, api_key="-", timeout=60, max_retries=0)
    reply = client.chat.completions.create(model=model_dir, messages=example["prompt"], max_tokens=8)
    return {"answer": reply.choices[0].message.content or ""}


def reward(completions, answer, **kwargs):
    return [float(len(a or "")) for a in answer]


data = Dataset.from_dict(
    {"prompt": [[{"role": "user", "content": f"Task {i}"}] for i in range(8)], "task_id": list(range(8))}
)
client = ServerClient(url, api_token=token, timeout=120)
max_staleness = int(os.environ.get("MAX_STALENESS", "0"))  # episodes of the next batch start ahead
rollout = AgentRollout(agent, client, dataset=data, max_concurrency=4, max_staleness=max_staleness)
args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=4, num_generations=4, max_completion_length=64,
                  max_steps=2, beta=0.0, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)  # fmt: skip
trainer = GRPOTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
    reward_funcs=reward,
    args=args,
    train_dataset=data,
    rollout_func=rollout,
    callbacks=[WeightSyncCallback(client)],
)
trainer.train()
rank = trainer.accelerator.process_index
rollout.close()
sessions = [e.session_id for e in rollout.last_episodes]
record = {"sessions": sessions, "tasks": sorted(set(tasks_seen)), "totals": dict(rollout.totals), "started": started}
(Path(os.environ["TRL_AGENTS_TEST_OUT"]) / f"rank{rank}.json").write_text(json.dumps(record))
