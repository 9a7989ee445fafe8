"""`trim_padding`: each GRPO micro-batch cut to its own longest row, and one optimizer step of stock `GRPOTrainer`
on recorded episodes of very different lengths gives the same losses and weights trimmed and untrimmed."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl import GRPOConfig, GRPOTrainer
from trl.agents import ReplayRollout
from trl.agents.masking import MaskedTokens
from trl.agents.padding import trim_micro_batch, trim_padding


def test_a_micro_batch_loses_the_columns_padded_in_every_row():
    prompt_mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    batch = {
        "prompt_ids": torch.arange(10).view(2, 5), "prompt_mask": prompt_mask,
        "completion_ids": torch.arange(12).view(2, 6), "completion_mask": completion_mask,
        "tool_mask": torch.ones(2, 6), "sampling_per_token_logps": torch.zeros(2, 6),
        "importance_sampling_ratio": torch.ones(2, 1), "advantages": torch.tensor([1.0, -1.0]),
        "num_items_in_batch": torch.tensor(5),
    }  # fmt: skip
    out = trim_micro_batch(batch)
    assert out["prompt_ids"].tolist() == [[2, 3, 4], [7, 8, 9]]
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[0, 1, 2], [6, 7, 8]]
    assert out["completion_mask"].shape == out["tool_mask"].shape == out["sampling_per_token_logps"].shape == (2, 3)
    assert out["importance_sampling_ratio"].shape == (2, 1)  # one value per sequence: not a token column
    assert out["advantages"] is batch["advantages"] and out["num_items_in_batch"] is batch["num_items_in_batch"]
    assert batch["completion_ids"].shape == (2, 6)  # the input is left as it was

    # per-token ratios are cut with the completion; a batch that is all padding keeps one column to run on
    empty = {**batch, "prompt_mask": torch.zeros(2, 5), "completion_mask": torch.zeros(2, 6, dtype=torch.long),
             "importance_sampling_ratio": torch.ones(2, 6)}  # fmt: skip
    out = trim_micro_batch(empty)
    assert out["prompt_ids"].shape == (2, 1) and out["completion_ids"].shape == (2, 1)
    assert out["importance_sampling_ratio"].shape == (2, 1)
    images = {**batch, "pixel_values": torch.zeros(3, 4)}
    assert trim_micro_batch(images) is images  # image tensors are laid out per prompt token: left to upstream


def episode(prompt: str, answer: int, prompt_len: int, turns: list[tuple[int, int]]) -> dict:
    """A recorded episode: `prompt_len` context tokens, then (sampled, inserted) runs of the given lengths."""
    tokens = MaskedTokens()
    tokens.add_context([5 + (answer + i) % 50 for i in range(prompt_len)])
    for k, (sampled, inserted) in enumerate(turns):
        tokens.add_sampled([60 + (answer + k + i) % 90 for i in range(sampled)], [-1.5] * sampled)
        tokens.add_context([7] * inserted)
    segment = {"token_ids": tokens.token_ids, "mask": tokens.mask, "logprobs": tokens.logprobs, "turns": []}
    return {"prompt": prompt, "session_id": f"{prompt}-{answer}", "result": {"answer": answer},
            "trajectory": {"segments": [segment]}}  # fmt: skip


# one long-tailed group per task: a 170-token episode among 8-25-token ones, prompts of 3 to 30 tokens
RECORDS = [
    episode("task a", 0, 30, [(4, 3), (2, 0)]), episode("task a", 1, 3, [(6, 0)]),
    episode("task a", 2, 12, [(60, 40), (50, 20)]), episode("task a", 3, 5, [(9, 2), (3, 0)]),
    episode("task b", 0, 8, [(5, 0)]), episode("task b", 1, 20, [(3, 4), (8, 0)]),
    episode("task b", 2, 4, [(12, 0)]), episode("task b", 3, 8, [(2, 2), (2, 2), (2, 0)]),
]  # fmt: skip


def reward(completions, answer, **kwargs) -> list[float]:
    return [float(a) for a in answer]


def train(model_dir: str, tmp_path, trim: bool) -> tuple[AutoModelForCausalLM, list[float], list[int]]:
    """Two optimizer steps on RECORDS (2 rows per micro-batch, 2 micro-batches per step): the trained model, the
    logged losses and the width of every sequence the model was run on."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    widths: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].size(1)),
                                    with_kwargs=True)  # fmt: skip
    args = GRPOConfig(output_dir=str(tmp_path / f"trim-{trim}"), per_device_train_batch_size=2,
                      gradient_accumulation_steps=2, num_generations=4, max_completion_length=256, optim="sgd",
                      learning_rate=1e-2, beta=0.0, max_steps=2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0)  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, rollout_func=ReplayRollout(RECORDS),
        train_dataset=Dataset.from_dict({"prompt": ["task a", "task b"]}),
    )  # fmt: skip
    if trim:
        assert trim_padding(trim_padding(trainer)) is trainer
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return model, losses, widths


def test_trimmed_steps_train_exactly_like_padded_ones_on_narrower_batches(tiny_model_dir, tmp_path):
    padded, padded_losses, padded_widths = train(tiny_model_dir, tmp_path, trim=False)
    trimmed, trimmed_losses, trimmed_widths = train(tiny_model_dir, tmp_path, trim=True)
    assert len(padded_losses) == 2 and padded_losses == pytest.approx(trimmed_losses, rel=1e-5, abs=1e-7)
    assert padded_losses[0] != 0.0  # the rewards differ within each group: there is a gradient to compare
    # SGD, so that the weights compare the gradients (Adam would turn float noise on a near-zero gradient into a
    # full learning-rate step); the attention runs at other widths and positions, hence float noise, not bit equality
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    largest_update = 0.0
    for (name, p), t in zip(padded.named_parameters(), trimmed.parameters(), strict=True):
        torch.testing.assert_close(t, p, rtol=0, atol=1e-5, msg=name)
        largest_update = max(largest_update, float((p.detach() - start[name]).abs().max()))
    assert largest_update > 5e-4  # 50x the tolerance: the steps moved the weights

    # every micro-batch ran at its generation batch's widest row padded, at its own longest row trimmed
    assert len(padded_widths) == len(trimmed_widths) == 4
    longest = max(len(r["trajectory"]["segments"][0]["token_ids"]) for r in RECORDS)
    assert padded_widths[0] == padded_widths[1] >= longest  # both micro-batches of the step with the long episode
    assert sum(trimmed_widths) < 0.7 * sum(padded_widths), (trimmed_widths, padded_widths)
