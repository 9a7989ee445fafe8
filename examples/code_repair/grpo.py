"""GRPO for the example coding agent: upstream `GRPOTrainer` + `trl.agents` (AgentRollout, weight sync) + this folder.

Each training prompt is one repair task; the trainer's sampler repeats it `num_generations` times; every copy is
one episode of `agent.RepairAgent` in its own `trl vllm-serve-async` session and workspace. Rewards come from
`rewards.py` (`--rewards similarity tests` by default), the weights go back to the server after every step.

Arguments as in upstream TRL's scripts (`TrlParser`): this script's own (`GRPOScriptArguments`, `TaskArguments`,
`AgentArguments`), then every `GRPOConfig` and `ModelConfig` option; `--config RECIPE.yaml` sets any of them, the
command line overrides the recipe. Recipes: `configs/grpo_qwen3_8b.yaml` (GPUs), `configs/grpo_demo.yaml` (CPU,
what `make demo` runs). All options: `--help`.

Setup (GPU node: 1 GPU serves, the rest train; `slurm/train.sbatch` does this split for you):

    pip install "trl-agents[vllm]" peft deepspeed
    trl vllm-serve-async --model Qwen/Qwen3-8B --data-parallel-size 1 --api-token SECRET \\
        --enable-auto-tool-choice --tool-call-parser hermes --max-model-len 16384 &

Usage:

    accelerate launch --config_file examples/code_repair/configs/zero2.yaml examples/code_repair/grpo.py \\
        --config examples/code_repair/configs/grpo_qwen3_8b.yaml --api_token SECRET --output_dir runs/qwen3-8b-grpo

`--dataset toy` builds and uses the offline toy suite (`toy_suite.py`); `--split` picks rows by their `split`
column where there is one. On CPU add `--use_cpu`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from transformers import TrainerCallback

from code_repair import training
from code_repair.agent import AgentArguments
from code_repair.data import TaskArguments
from code_repair.rewards import TestsPassReward, diff_similarity_reward, exact_patch_reward, non_empty_patch_reward
from trl.agents.advantage_weights import check_weight


REWARDS = {
    "similarity": lambda ws, script: diff_similarity_reward,
    "tests": lambda ws, script: TestsPassReward(ws, seconds=script.test_seconds),
    "nonempty": lambda ws, script: non_empty_patch_reward,
    "exact": lambda ws, script: exact_patch_reward,
}
# this script's defaults over upstream's GRPOConfig (and `training.SCRIPT_DEFAULTS`): agent episodes are long
DEFAULTS = {"max_completion_length": 8192}


@dataclass
class GRPOScriptArguments:
    """What `grpo.py` adds to `GRPOConfig` and `ModelConfig`: the server, the rewards, recorded episodes."""

    served_model_name: str | None = field(
        default=None, metadata={"help": "the name the server knows the model by (default: model_name_or_path)"}
    )
    server_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "the trl vllm-serve-async gateway"})
    api_token: str | None = field(
        default_factory=lambda: os.environ.get("TRL_AGENTS_API_TOKEN"),
        metadata={"help": "the gateway's --api-token (default: $TRL_AGENTS_API_TOKEN)"},
    )
    weight_transfer: str = field(
        default="auto",
        metadata={
            "help": "how weights reach the replicas: auto (the backend the gateway's replicas run: nccl on GPUs), "
            "shm (trainer and replicas on one host) or nccl (GPUs, across nodes too)",
            "choices": ["auto", "shm", "nccl"],
        },
    )
    master_address: str | None = field(
        default=None,
        metadata={"help": "nccl: this node's address as the inference nodes reach it (default: the address this "
                  "host uses to reach the gateway)"},
    )  # fmt: skip
    master_port: int | None = field(
        default=None, metadata={"help": "nccl: port of the weight-transfer rendezvous on master_address (29600)"}
    )
    rewards: list[str] = field(
        default_factory=lambda: ["similarity", "tests"], metadata={"help": f"reward functions, from {sorted(REWARDS)}"}
    )
    test_seconds: float = field(default=120.0, metadata={"help": "time limit of one tests-pass check"})
    max_concurrency: int = field(default=8, metadata={"help": "episodes at once per training process"})
    max_staleness: int = field(
        default=0,
        metadata={"help": "k >= 1: the next batches' episodes run while the trainer trains, no turn more than k "
                  "policy versions behind (trl.agents.lookahead); 0: synchronous"},
    )  # fmt: skip
    metrics_file: str | None = field(default=None, metadata={"help": "append one JSON line per logged step here"})
    record_to: str | None = field(default=None, metadata={"help": "append every episode to this JSONL (for replay)"})
    trim_padding: bool = field(
        default=False,
        metadata={"help": "cut each micro-batch to its own longest row before its loss (trl.agents.padding): the "
                  "same loss on fewer columns; with per_device_train_batch_size 1 no padding is left"},
    )  # fmt: skip
    negative_advantage_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the advantages of episodes worse than their group's mean "
                  "(trl.agents.advantage_weights): 1 is upstream's GRPO, 0 learns from the better episodes only"},
    )  # fmt: skip
    trainable_parameters: str | None = field(
        default=None,
        metadata={"help": "regular expression: train only the parameters whose names it matches (re.search), freeze "
                  "the rest (the weight sync still sends every parameter); default: all"},
    )  # fmt: skip
    replay: str | None = field(
        default=None,
        metadata={"help": "train on recorded episodes (a record_to file or a gateway --journal-dir), no server"},
    )
    replay_match: str = field(
        default="prompt",
        metadata={
            "help": "prompt: each task gets its own recorded episodes; order: episodes in file order",
            "choices": ["prompt", "order"],
        },
    )

    def __post_init__(self):
        unknown = sorted(set(self.rewards) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown rewards {unknown}; choose from {sorted(REWARDS)}")
        check_weight(self.negative_advantage_weight)  # at parse time, before a model is loaded


class Arguments(NamedTuple):
    script: GRPOScriptArguments
    task: TaskArguments
    agent: AgentArguments
    training: Any  # trl.GRPOConfig
    model: Any  # trl.ModelConfig


def make_parser():
    """`TrlParser` over this script's dataclasses and upstream's `GRPOConfig` and `ModelConfig`, with `DEFAULTS`."""
    from trl import GRPOConfig, ModelConfig

    return training.make_parser(
        (GRPOScriptArguments, TaskArguments, AgentArguments, GRPOConfig, ModelConfig), DEFAULTS
    )


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Defaults, then the `--config` recipe, then the command line; the model is required."""
    args = Arguments(*make_parser().parse_args_and_config(argv))
    if not args.model.model_name_or_path:
        raise SystemExit("grpo.py: --model_name_or_path is required (the model to train; the server must serve it)")
    if args.training.reward_weights is not None and len(args.training.reward_weights) != len(args.script.rewards):
        raise SystemExit(
            f"grpo.py: {len(args.script.rewards)} rewards {args.script.rewards} but "
            f"{len(args.training.reward_weights)} reward_weights {args.training.reward_weights}"
        )
    return args


class MetricsFile(TrainerCallback):
    """One JSON line per logged step (every numeric log value, plus the batch's non-empty-patch rate and shell
    commands by type from this process's episodes) appended to `path` on the main process."""

    def __init__(self, path: Path, rollout):
        self.path, self.rollout = Path(path), rollout
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        episodes = self.rollout.last_episodes
        commands = Counter()
        for episode in episodes:
            commands.update({k: v for k, v in episode.result.items() if k.startswith("shell_cmd_")})
        diffs = [bool((e.result.get("generated_diff") or "").strip()) for e in episodes]
        line = {"step": state.global_step, "time": time.time(), **{k: v for k, v in logs.items() if _number(v)}}
        line["non_empty_rate"] = sum(diffs) / max(len(diffs), 1)
        line.update(commands)
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def build_trainer(args: Arguments, dataset=None, model=None, callbacks=()):
    """The GRPOTrainer for `args` (the demo passes its own dataset, model and extra callbacks)."""
    from transformers import AutoTokenizer

    from trl import GRPOTrainer, get_peft_config
    from trl.agents import ReplayRollout, WeightSyncCallback

    script, model_name = args.script, args.model.model_name_or_path
    dataset = dataset if dataset is not None else args.task.load()
    workspaces = args.task.workspaces()
    if model is None:
        model = training.load_model(args.model)
    if script.trainable_parameters:
        if args.model.use_peft:
            raise SystemExit("grpo.py: --trainable_parameters and --use_peft both choose what trains; pick one")
        trained = freeze_except(model, script.trainable_parameters)
        logging.getLogger(__name__).info("training %d parameter tensors: %s", len(trained), ", ".join(trained))
    if script.replay:  # no server, no agent: the recorded episodes, and no weights to send anywhere
        client = None
        rollout = ReplayRollout(script.replay, match=script.replay_match, record_to=script.record_to)
        callbacks = list(callbacks)
    else:
        client, rollout = _live_rollout(args, workspaces, dataset)
        callbacks = [WeightSyncCallback(client, every=1, sync_on_train_begin=True), *callbacks]
    trainer = GRPOTrainer(
        model=model,
        processing_class=AutoTokenizer.from_pretrained(model_name),
        reward_funcs=[REWARDS[name](workspaces, script) for name in script.rewards],
        args=args.training,
        train_dataset=dataset,
        rollout_func=rollout,
        peft_config=get_peft_config(args.model),
        callbacks=callbacks,
    )
    if script.trim_padding:
        from trl.agents.padding import trim_padding

        trim_padding(trainer)
    if script.negative_advantage_weight != 1.0:
        from trl.agents.advantage_weights import weight_negative_advantages

        weight_negative_advantages(trainer, script.negative_advantage_weight)
    if script.metrics_file:  # after the sync callback, so its weight_sync/* keys are in the logs it sees
        trainer.add_callback(MetricsFile(Path(script.metrics_file), rollout))
    return trainer, rollout, client


def freeze_except(model, pattern: str) -> list[str]:
    """Freeze every parameter of `model` whose name `pattern` does not match (`re.search`); return the names left
    trainable. ValueError naming some parameters when it matches none."""
    names = [name for name, _ in model.named_parameters()]
    trained = [name for name in names if re.search(pattern, name)]
    if not trained:
        raise ValueError(f"trainable_parameters {pattern!r} matches no parameter of the model; some: {names[:6]}")
    for name, param in model.named_parameters():
        param.requires_grad_(re.search(pattern, name) is not None)
    return trained


def _live_rollout(args: Arguments, workspaces, dataset):
    """The gateway client and the `AgentRollout` running `RepairAgent` episodes through it."""
    from code_repair.agent import RepairAgent
    from trl.agents import AgentRollout, ServerClient

    script = args.script
    client = ServerClient(
        script.server_url, api_token=script.api_token, timeout=600,
        transfer=None if script.weight_transfer == "auto" else script.weight_transfer,
        master_address=script.master_address, master_port=script.master_port,
    )  # fmt: skip
    served = script.served_model_name or args.model.model_name_or_path
    agent = RepairAgent(workspaces, args.agent.config(served, args.training.temperature, args.training.top_p))
    timeout = args.agent.time_limit + 120  # the agent stops itself at its time limit; this catches a hung server
    rollout = AgentRollout(
        agent, client, dataset=dataset, max_concurrency=script.max_concurrency, timeout=timeout,
        max_staleness=script.max_staleness, record_to=script.record_to,
    )  # fmt: skip
    return client, rollout


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per HTTP request of every agent turn: only their warnings
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    trainer, rollout, client = build_trainer(args)
    trainer.train()
    trainer.save_model(args.training.output_dir)
    rollout.close()
    if client is not None:
        client.close()
    print(f"episodes: {dict(rollout.totals)}")
    import torch

    if torch.cuda.is_available():
        rank = trainer.accelerator.process_index
        print(f"rank {rank}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
