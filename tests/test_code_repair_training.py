"""The example training scripts run for real on the tiny model: `sft.py` writes scripted-expert trajectories for the
toy suite and fits them (loss falls); `grpo.py` trains through the gateway with the real agent, both rewards and a
weight sync per step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from code_repair import grpo, sft
from trl.agents import ServerClient
from trl.agents.testing.servers import API_TOKEN


CONFIGS = Path(grpo.__file__).parent / "configs"


def test_sft_on_scripted_expert_trajectories(tiny_model_dir, tmp_path):
    expert = tmp_path / "expert.jsonl"
    argv = ["--model_name_or_path", tiny_model_dir, "--dataset", "toy", "--cache_dir", str(tmp_path / "cache"),
            "--write_expert", str(expert), "--trajectories", str(expert), "--output_dir", str(tmp_path / "sft"),
            "--max_steps", "12", "--learning_rate", "3e-3", "--use_cpu"]  # fmt: skip
    args = sft.parse_args(argv)
    sft.write_expert_trajectories(list(args.task.load()), args.task.workspaces(), expert)
    trainer = sft.train(args)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.8 * sum(losses[:3])
    episodes = [json.loads(line) for line in expert.read_text().splitlines()]
    assert len(episodes) == 30 and all(e["reward"] == 1.0 for e in episodes)  # the train split, all solved
    roles = [m["role"] for m in episodes[0]["messages"]]
    assert roles[:3] == ["system", "user", "assistant"] and roles.count("tool") == 3
    call = episodes[0]["messages"][2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"])["command"].startswith("grep")  # a JSON string, as the API has it
    # what SFT trains on is what the model would write: no argument keys borrowed from the other tool
    collator = trainer.data_collator
    batch = collator([trainer.train_dataset[0]])
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    trained = trainer.processing_class.decode(labels)
    assert '"arguments": {"command": "grep' in trained and "null" not in trained
    assert (tmp_path / "sft" / "model.safetensors").exists()


def test_sft_refuses_bad_input(tiny_model_dir, tmp_path):
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    args = sft.parse_args(
        ["--model_name_or_path", tiny_model_dir, "--trajectories", str(empty), "--output_dir", "x", "--use_cpu"]
    )
    try:
        sft.train(args)
    except ValueError as e:
        assert "no trajectories" in str(e)
    else:
        raise AssertionError("an empty trajectory file must be refused")


def test_grpo_script_trains_through_the_gateway(gateway, tiny_model_dir, tmp_path):
    with ServerClient(gateway.url, api_token=API_TOKEN, timeout=120) as client:
        version = client.weight_version
    argv = ["--model_name_or_path", tiny_model_dir, "--dataset", "toy", "--cache_dir", str(tmp_path / "cache"),
            "--server_url", gateway.url, "--api_token", API_TOKEN, "--output_dir", str(tmp_path / "grpo"),
            "--rewards", "similarity", "tests", "nonempty", "--reward_weights", "1", "1", "0.1",
            "--num_generations", "4", "--per_device_train_batch_size", "4", "--max_steps", "2",
            "--tool_limit", "3", "--token_limit", "200", "--response_limit", "48", "--time_limit", "60",
            "--max_completion_length", "3000", "--learning_rate", "1e-3", "--use_cpu", "--max_concurrency", "4",
            "--record_to", str(tmp_path / "episodes.jsonl")]  # fmt: skip
    args = grpo.parse_args(argv)
    trainer, rollout, client = grpo.build_trainer(args)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 2
    assert "rewards/diff_similarity_reward/mean" in logs[0] and "rewards/tests_pass_reward/mean" in logs[0]
    assert logs[0]["agent/episodes"] == 4 and rollout.totals["episodes"] == 8
    assert client.weight_version == version + 3  # before training, then after each step
    for episode in rollout.last_episodes:
        assert episode.failure is None and episode.result["stop_reason"] in ("tool_limit", "token_limit")
    rollout.close()

    # the same script again on the recorded episodes: no server, no agent, the recorded results reach the rewards
    recorded = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(recorded) == 8 and all(
        r["trajectory"]["segments"] and "generated_diff" in r["result"] for r in recorded
    )
    version = client.weight_version
    replay = grpo.parse_args([
        "--model_name_or_path", tiny_model_dir, "--dataset", "toy", "--cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(tmp_path / "replay"), "--rewards", "similarity", "nonempty", "--num_generations", "4",
        "--per_device_train_batch_size", "4", "--max_steps", "2", "--max_completion_length", "3000", "--use_cpu",
        "--replay", str(tmp_path / "episodes.jsonl"), "--replay_match", "order",
        "--trainable_parameters", r"^model\.norm\.weight$", "--negative_advantage_weight", "0",
    ])  # fmt: skip
    trainer, rollout, none = grpo.build_trainer(replay)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n != "model.norm.weight"}
    trainer.train()
    assert none is None and rollout.totals["episodes"] == 8
    assert trainer.compute_loss.negative_advantage_weight == 0.0  # the script's options reached the trainer
    for name, param in trainer.model.named_parameters():
        assert param.requires_grad == (name == "model.norm.weight")
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), name
    replayed = sorted(e.session_id for e in rollout.last_episodes)
    assert replayed == sorted(r["session_id"] for r in recorded[4:])  # step 2 replays the second recorded batch
    assert client.weight_version == version
    client.close()


def test_grpo_script_refuses_unknown_rewards_and_mismatched_weights():
    with pytest.raises(ValueError, match=r"unknown rewards \['vibes'\]"):
        grpo.parse_args(
            ["--model_name_or_path", "m", "--output_dir", "x", "--use_cpu", "--rewards", "similarity", "vibes"]
        )
    with pytest.raises(SystemExit, match="2 rewards .* but 1 reward_weights"):
        grpo.parse_args(["--model_name_or_path", "m", "--output_dir", "x", "--use_cpu", "--reward_weights", "1"])


def test_recipes_parse_and_the_command_line_overrides_them():
    """Every shipped recipe parses with its script's own parser; a flag beats the recipe, the recipe the defaults."""
    for recipe in sorted(CONFIGS.glob("grpo_*.yaml")):
        args = grpo.parse_args(["--config", str(recipe), "--model_name_or_path", "m", "--use_cpu", "--bf16", "false",
                                "--tool_limit", "3"])  # fmt: skip
        assert args.agent.tool_limit == 3 and args.training.max_completion_length >= 4096, recipe
    demo = grpo.parse_args(["--config", str(CONFIGS / "grpo_demo.yaml"), "--model_name_or_path", "m"])
    assert (demo.training.temperature, demo.training.max_steps, demo.agent.token_limit) == (1.3, 8, 600)
    assert grpo.parse_args(["--model_name_or_path", "m", "--use_cpu"]).training.max_completion_length == 8192
    for recipe in sorted(CONFIGS.glob("sft_*.yaml")):
        args = sft.parse_args(["--config", str(recipe), "--model_name_or_path", "m", "--trajectories", "t.jsonl",
                               "--use_cpu", "--bf16", "false", "--max_steps", "3"])  # fmt: skip
        assert args.training.max_steps == 3 and args.training.max_length >= 8192, recipe
    with pytest.raises(SystemExit, match="--model_name_or_path is required"):
        grpo.parse_args(["--use_cpu"])
