"""SFT warm-start for the coding agent: train on agent trajectories with upstream `SFTTrainer` and the masking
collator (`trl.agents.DataCollatorForAgentTrajectories`: loss only on what the model wrote, never on task text, tool
results or template tokens).

Trajectories are JSONL rows of conversations (`messages`, `tools`, `reward`, `instance_id`: what
`--write-expert` writes) or recorded gateway segments (`token_ids`, `mask`). `--min-reward` and `--top-k` keep the
best episodes per task (`trl.agents.filter_by_reward`). `--write-expert` first runs the real agent with the scripted
expert (`scripted_model.py`) on the task rows (`--tasks` names some) and keeps the episodes whose tests pass:
demonstrations for the toy suite without any model.

Setup: `pip install trl-agents`. Usage:

    python examples/code_repair/sft.py --model Qwen/Qwen3-8B --trajectories episodes.jsonl --output-dir runs/sft
    python examples/code_repair/sft.py --model MODEL --dataset toy --write-expert runs/expert.jsonl \\
        --trajectories runs/expert.jsonl --output-dir runs/sft --use-cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from code_repair.agent import TOOLS, AgentConfig, RepairAgent
from code_repair.data import Workspaces, add_task_flags, add_trainer_flags, command_env, task_dataset
from code_repair.rewards import TestsPassReward
from code_repair.scripted_model import ScriptedModel


def as_training_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages ready for a dataset: no None content. Tool-call arguments stay JSON strings, as the API returns them
    (chat templates print them verbatim): as dicts, `datasets` would merge the argument schemas of all tools into one
    struct and every call would render with the other tools' keys as nulls."""
    return [{**message, "content": message.get("content") or ""} for message in messages]


def write_expert_trajectories(rows, workspaces: Workspaces, path: Path, workers: int = 4) -> list[dict[str, Any]]:
    """Run the agent with the scripted expert on `rows`; write (and return) one trajectory per episode, with its
    tests-pass reward."""
    agent = RepairAgent(workspaces, AgentConfig(tool_limit=12, time_limit=120))
    tests_pass = TestsPassReward(workspaces)
    done = []

    def episode(row, base_url):
        result = agent.episode(row, base_url)
        done.append(row["instance_id"])
        print(f"\rexpert episodes: {len(done)}/{len(rows)}", end="", file=sys.stderr, flush=True)
        return {"instance_id": row["instance_id"], "messages": as_training_messages(result.messages), "tools": TOOLS,
                "reward": tests_pass.score(row, result.diff), "stop_reason": result.stop_reason}  # fmt: skip

    with ScriptedModel(rows) as model, ThreadPoolExecutor(workers) as pool:
        episodes = list(pool.map(lambda row: episode(row, model.base_url), rows))
    print(file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return episodes


def train(args, callbacks=()):
    """SFT on `args.trajectories`; returns the trainer after training."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl import SFTConfig, SFTTrainer
    from trl.agents import DataCollatorForAgentTrajectories, filter_by_reward

    rows = [json.loads(line) for line in Path(args.trajectories).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"no trajectories in {args.trajectories}")
    data = Dataset.from_list(rows)
    if "reward" in data.column_names:
        group = "instance_id" if args.top_k and "instance_id" in data.column_names else None
        data = filter_by_reward(data, args.min_reward, group_column=group, top_k=args.top_k if group else None)
    if len(data) == 0:
        raise ValueError(f"no trajectory in {args.trajectories} has reward >= {args.min_reward}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    config = SFTConfig(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        use_cpu=args.use_cpu,
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=args.report_to,
        remove_unused_columns=False,  # the collator needs messages/tools, not text columns
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorForAgentTrajectories(tokenizer, max_length=args.max_length),
        callbacks=list(callbacks),
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    return trainer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--model", required=True)
    add("--trajectories", required=True, help="JSONL of conversations or recorded segments")
    add("--output-dir", required=True)
    add("--write-expert", type=Path, help="first write scripted-expert trajectories for --dataset to this file")
    add_task_flags(p)
    add("--min-reward", type=float, default=1.0, help="keep trajectories with at least this reward")
    add("--top-k", type=int, default=None, help="keep at most this many trajectories per task")
    add("--max-length", type=int, default=8192)
    add("--learning-rate", type=float, default=1e-5)
    add_trainer_flags(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.write_expert:
        try:
            rows = list(task_dataset(args.dataset, args.split, args.cache_dir, args.tasks))
        except ValueError as exc:
            raise SystemExit(f"sft.py --write-expert: {exc}") from None
        episodes = write_expert_trajectories(
            rows, Workspaces(args.cache_dir, env=command_env(args.dataset)), args.write_expert
        )
        solved = sum(e["reward"] == 1.0 for e in episodes)
        print(f"wrote {len(episodes)} expert trajectories ({solved} pass their tests) to {args.write_expert}")
    trainer = train(args)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(f"SFT: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
