"""SFT warm-start for the coding agent: train on agent trajectories with upstream `SFTTrainer` and the masking
collator (`trl.agents.DataCollatorForAgentTrajectories`: loss only on what the model wrote, never on task text, tool
results or template tokens).

Trajectories are JSONL rows of conversations (`messages`, `tools`, `reward`, `instance_id`: what
`--write-expert` writes) or recorded gateway segments (`token_ids`, `mask`). `--min-reward` and `--top-k` keep the
best episodes per task (`trl.agents.filter_by_reward`). `--write-expert` first runs the real agent with the scripted
expert (`scripted_model.py`) on the task rows (`--tasks` names some) and keeps the episodes whose tests pass:
demonstrations for the toy suite without any model.

Arguments as in upstream TRL's scripts (`TrlParser`): `SFTScriptArguments`, `TaskArguments`, then every `SFTConfig`
and `ModelConfig` option; `--config RECIPE.yaml` sets any of them, the command line overrides the recipe. Recipes:
`configs/sft_qwen3_8b.yaml` (GPUs), `configs/sft_demo.yaml` (CPU, what `make demo` runs). All options: `--help`.

Setup: `pip install trl-agents`. Usage:

    python examples/code_repair/sft.py --config examples/code_repair/configs/sft_qwen3_8b.yaml \\
        --trajectories episodes.jsonl --output_dir runs/sft
    python examples/code_repair/sft.py --model_name_or_path MODEL --dataset toy --write_expert runs/expert.jsonl \\
        --trajectories runs/expert.jsonl --output_dir runs/sft --use_cpu
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from code_repair import training
from code_repair.agent import TOOLS, AgentConfig, RepairAgent
from code_repair.data import TaskArguments, Workspaces
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


# this script's defaults over upstream's SFTConfig (and `training.SCRIPT_DEFAULTS`): whole agent episodes
DEFAULTS = {"max_length": 8192, "learning_rate": 1e-5}


@dataclass
class SFTScriptArguments:
    """What `sft.py` adds to `SFTConfig` and `ModelConfig`: the trajectories and which of them to keep."""

    trajectories: str | None = field(default=None, metadata={"help": "JSONL of conversations or recorded segments"})
    write_expert: str | None = field(
        default=None, metadata={"help": "first write scripted-expert trajectories for the tasks to this file"}
    )
    min_reward: float = field(default=1.0, metadata={"help": "keep trajectories with at least this reward"})
    top_k: int | None = field(default=None, metadata={"help": "keep at most this many trajectories per task"})


class Arguments(NamedTuple):
    script: SFTScriptArguments
    task: TaskArguments
    training: Any  # trl.SFTConfig
    model: Any  # trl.ModelConfig


def make_parser():
    """`TrlParser` over this script's dataclasses and upstream's `SFTConfig` and `ModelConfig`, with `DEFAULTS`."""
    from trl import ModelConfig, SFTConfig

    return training.make_parser((SFTScriptArguments, TaskArguments, SFTConfig, ModelConfig), DEFAULTS)


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Defaults, then the `--config` recipe, then the command line; model and trajectories are required."""
    args = Arguments(*make_parser().parse_args_and_config(argv))
    if not args.model.model_name_or_path:
        raise SystemExit("sft.py: --model_name_or_path is required")
    if not args.script.trajectories:
        raise SystemExit("sft.py: --trajectories is required (a JSONL file; --write_expert can write it first)")
    return args


def train(args: Arguments, callbacks=()):
    """SFT on the trajectories; returns the trainer after training."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl import SFTTrainer, get_peft_config
    from trl.agents import DataCollatorForAgentTrajectories, filter_by_reward

    script, config = args.script, args.training
    rows = [json.loads(line) for line in Path(script.trajectories).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"no trajectories in {script.trajectories}")
    data = Dataset.from_list(rows)
    if "reward" in data.column_names:
        group = "instance_id" if script.top_k and "instance_id" in data.column_names else None
        data = filter_by_reward(data, script.min_reward, group_column=group, top_k=script.top_k if group else None)
    if len(data) == 0:
        raise ValueError(f"no trajectory in {script.trajectories} has reward >= {script.min_reward}")
    tokenizer = AutoTokenizer.from_pretrained(args.model.model_name_or_path)
    model = training.load_model(args.model)
    # what the masking collator needs whatever the recipe says: the messages/tools columns, no text preparation
    config.remove_unused_columns = False
    config.dataset_kwargs = {"skip_prepare_dataset": True}
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorForAgentTrajectories(tokenizer, max_length=config.max_length),
        peft_config=get_peft_config(args.model),
        callbacks=list(callbacks),
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    tokenizer.save_pretrained(config.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.script.write_expert:
        try:
            rows = list(args.task.load())
        except ValueError as exc:
            raise SystemExit(f"sft.py --write_expert: {exc}") from None
        episodes = write_expert_trajectories(rows, args.task.workspaces(), Path(args.script.write_expert))
        solved = sum(e["reward"] == 1.0 for e in episodes)
        print(f"wrote {len(episodes)} expert trajectories ({solved} pass their tests) to {args.script.write_expert}")
    trainer = train(args)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(f"SFT: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {args.training.output_dir}")


if __name__ == "__main__":
    main()
