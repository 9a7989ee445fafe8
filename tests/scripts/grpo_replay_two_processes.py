"""Run by tests/test_rollout.py under `accelerate launch --num_processes 2`: 2 GRPO steps from recorded episodes
(`ReplayRollout`, no server), each process writing the recorded session ids it was handed per batch to
OUTPUT_DIR/rank{N}.json.

Usage: grpo_replay_two_processes.py EPISODES_JSONL MODEL_DIR OUTPUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl import GRPOConfig, GRPOTrainer
from trl.agents import ReplayRollout


episodes, model_dir, output_dir = sys.argv[1:4]
records = [json.loads(line) for line in Path(episodes).read_text().splitlines()]
prompts = list(dict.fromkeys(r["prompt"] for r in records))
rollout = ReplayRollout(episodes)
handed: list[list[str]] = []


def reward(completions, answer, **kwargs):
    handed.append([e.session_id for e in rollout.last_episodes])
    return [float(a) for a in answer]


args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=2, num_generations=4, max_completion_length=64,
                  max_steps=2, beta=0.0, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)  # fmt: skip
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
before = {k: v.clone() for k, v in model.state_dict().items()}
trainer = GRPOTrainer(
    model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
    rollout_func=rollout,
)  # fmt: skip
trainer.train()
changed = sum(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
rank = trainer.accelerator.process_index
(Path(output_dir) / f"rank{rank}.json").write_text(json.dumps({"handed": handed, "changed": changed}))
