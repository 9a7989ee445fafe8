"""GRPO for the example coding agent: upstream `GRPOTrainer` + `trl.agents` (AgentRollout, weight sync) + this folder.

Each training prompt is one repair task; the trainer's sampler repeats it `--num-generations` times; every copy is
one episode of `agent.RepairAgent` in its own `trl vllm-serve-async` session and workspace. Rewards come from
`rewards.py` (`--rewards similarity,tests` by default), the weights go back to the server after every step.

Setup (GPU node: 1 GPU serves, the rest train; `slurm/train.sbatch` does this split for you):

    pip install "trl-agents[vllm]" peft deepspeed
    trl vllm-serve-async --model Qwen/Qwen3-8B --data-parallel-size 1 --api-token SECRET \\
        --enable-auto-tool-choice --tool-call-parser hermes --max-model-len 16384 &

Usage:

    accelerate launch --config_file examples/code_repair/configs/zero2.yaml examples/code_repair/grpo.py \\
        --model Qwen/Qwen3-8B --dataset SWE-Gym/SWE-Gym-Lite --server-url http://127.0.0.1:8000 \\
        --api-token SECRET --output-dir runs/qwen3-8b-grpo --lora --bf16 --gradient-checkpointing

`--dataset toy` builds and uses the offline toy suite (`toy_suite.py`); `--split` picks rows by their `split`
column where there is one. On CPU add `--use-cpu`. All flags: `--help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

from transformers import TrainerCallback

from code_repair.data import Workspaces, add_task_flags, add_trainer_flags, command_env, task_dataset
from code_repair.rewards import TestsPassReward, diff_similarity_reward, exact_patch_reward, non_empty_patch_reward


REWARDS = {
    "similarity": lambda ws, args: diff_similarity_reward,
    "tests": lambda ws, args: TestsPassReward(ws, seconds=args.test_seconds),
    "nonempty": lambda ws, args: non_empty_patch_reward,
    "exact": lambda ws, args: exact_patch_reward,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--model", required=True, help="model to train (path or Hub name); the server must serve the same weights")
    add_task_flags(p)
    add("--served-model-name", default=None, help="the name the server knows the model by (default: --model)")
    add("--server-url", default="http://127.0.0.1:8000", help="the trl vllm-serve-async gateway")
    add("--api-token", default=os.environ.get("TRL_AGENTS_API_TOKEN"), help="the gateway's --api-token")
    add(
        "--weight-transfer",
        default="auto",
        choices=["auto", "shm", "nccl"],
        help="how weights reach the replicas: auto (the backend the gateway's replicas run: nccl on GPUs), shm "
        "(trainer and replicas on one host) or nccl (GPUs, across nodes too)",
    )
    add(
        "--master-address",
        default=None,
        help="nccl: this node's address as the inference nodes reach it (default: the client picks the address "
        "this host uses to reach the gateway)",
    )
    add(
        "--master-port",
        type=int,
        default=None,
        help="nccl: port of the weight-transfer group's rendezvous on --master-address, open to the inference nodes "
        "(default: 29600)",
    )
    add("--output-dir", required=True)
    add("--rewards", default="similarity,tests", help=f"comma-separated, from {sorted(REWARDS)}")
    add("--reward-weights", default=None, help="comma-separated weights, one per reward (default: all 1)")
    add("--test-seconds", type=float, default=120.0, help="time limit of one tests-pass check")
    # the agent
    add("--tool-limit", type=int, default=30)
    add("--token-limit", type=int, default=8192, help="tokens the agent may generate per episode")
    add("--time-limit", type=float, default=120.0, help="seconds per episode for the agent")
    add("--response-limit", type=int, default=1024, help="max_tokens of one reply")
    add("--temperature", type=float, default=1.0)
    add(
        "--fuzzy-match",
        type=float,
        default=None,
        help="apply_patch edits the closest line when a one-line search is this similar (0-1; default: exact only)",
    )
    add("--max-concurrency", type=int, default=8, help="episodes at once per training process")
    # the trainer
    add("--learning-rate", type=float, default=1e-6)
    add("--num-generations", type=int, default=8)
    add("--max-completion-length", type=int, default=8192, help="tokens kept per episode (longer: clipped)")
    add("--beta", type=float, default=0.0, help="KL coefficient")
    add("--loss-type", default="dapo")
    add("--importance-sampling-level", default="token", choices=["token", "sequence"], help="sequence: GSPO")
    add_trainer_flags(p)
    add("--lora", action="store_true", help="train a LoRA adapter (merged into the served weights at each sync)")
    add("--lora-r", type=int, default=32)
    add("--lora-alpha", type=int, default=64)
    add("--logging-steps", type=int, default=1)
    add("--save-steps", type=int, default=0, help="0: save only at the end")
    add("--metrics-file", type=Path, default=None, help="append one JSON line of metrics per logged step here")
    # recorded episodes
    add("--record-to", type=Path, default=None, help="append every episode to this JSONL (input of --replay)")
    add(
        "--replay",
        type=Path,
        default=None,
        help="train on recorded episodes (a --record-to file or a gateway --journal-dir) instead of a live server",
    )
    add(
        "--replay-match",
        default="prompt",
        choices=["prompt", "order"],
        help="prompt: each task gets its own recorded episodes; order: episodes in file order, whatever the task",
    )
    return p


def reward_functions(args, workspaces):
    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    unknown = sorted(set(names) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; choose from {sorted(REWARDS)}")
    weights = [float(w) for w in args.reward_weights.split(",")] if args.reward_weights else None
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"{len(names)} rewards but {len(weights)} weights")
    return [REWARDS[n](workspaces, args) for n in names], weights


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


def build_trainer(args, dataset=None, model=None, callbacks=()):
    """The GRPOTrainer for `args` (the demo passes its own dataset, model and extra callbacks)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl import GRPOConfig, GRPOTrainer
    from trl.agents import AgentRollout, ReplayRollout, ServerClient, WeightSyncCallback

    dataset = dataset if dataset is not None else task_dataset(args.dataset, args.split, args.cache_dir, args.tasks)
    workspaces = Workspaces(args.cache_dir, env=command_env(args.dataset))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if model is None:
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets)
    if args.replay:  # no server, no agent: the recorded episodes, and no weights to send anywhere
        client = None
        rollout = ReplayRollout(args.replay, match=args.replay_match, record_to=args.record_to)
        callbacks = list(callbacks)
    else:
        from code_repair.agent import AgentConfig, RepairAgent  # the agent needs `openai`; replaying does not

        client = ServerClient(
            args.server_url, api_token=args.api_token, timeout=600, transfer=None if args.weight_transfer == "auto" else args.weight_transfer,
            master_address=args.master_address, master_port=args.master_port,
        )  # fmt: skip
        agent_config = AgentConfig(
            model=args.served_model_name or args.model,
            tool_limit=args.tool_limit,
            token_limit=args.token_limit,
            time_limit=args.time_limit,
            response_limit=args.response_limit,
            temperature=args.temperature,
            fuzzy_match=args.fuzzy_match,
        )
        agent = RepairAgent(workspaces, agent_config)
        timeout = args.time_limit + 120  # the agent stops itself at its time limit; this catches a hung server
        rollout = AgentRollout(
            agent, client, dataset=dataset, max_concurrency=args.max_concurrency, timeout=timeout,
            record_to=args.record_to,
        )  # fmt: skip
        callbacks = [WeightSyncCallback(client, every=1, sync_on_train_begin=True), *callbacks]
    reward_funcs, weights = reward_functions(args, workspaces)
    config = GRPOConfig(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        max_completion_length=args.max_completion_length,
        beta=args.beta,
        loss_type=args.loss_type,
        importance_sampling_level=args.importance_sampling_level,
        reward_weights=weights,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        use_cpu=args.use_cpu,
        seed=args.seed,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to=args.report_to,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=dataset,
        rollout_func=rollout,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if args.metrics_file:  # after the sync callback, so its weight_sync/* keys are in the logs it sees
        trainer.add_callback(MetricsFile(args.metrics_file, rollout))
    return trainer, rollout, client


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per HTTP request of every agent turn: only their warnings
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    trainer, rollout, client = build_trainer(args)
    trainer.train()
    trainer.save_model(args.output_dir)
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
