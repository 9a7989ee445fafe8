"""`weight_negative_advantages`: stock `GRPOTrainer`'s loss gets the advantages of the below-average episodes
weighted, the others as upstream computed them; and `grpo.py`'s `freeze_except` trains only the parameters named."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from code_repair import grpo
from tests.test_padding import RECORDS, reward
from trl import GRPOConfig, GRPOTrainer
from trl.agents import ReplayRollout
from trl.agents.advantage_weights import weight_negative_advantages, weighted_advantages


def test_only_negative_advantages_are_weighted():
    batch = {"advantages": torch.tensor([1.5, -0.5, 0.0, -2.0]), "completion_ids": torch.ones(4, 3)}
    out = weighted_advantages(batch, 0.25)
    assert out["advantages"].tolist() == [1.5, -0.125, 0.0, -0.5]
    assert out["completion_ids"] is batch["completion_ids"] and batch["advantages"][1] == -0.5  # input unchanged
    assert weighted_advantages(batch, 0.0)["advantages"].tolist() == [1.5, 0.0, 0.0, 0.0]


def trainer(model_dir: str, tmp_path) -> GRPOTrainer:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path / "psr"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                      num_generations=4, max_completion_length=256, optim="sgd", learning_rate=1e-2, beta=0.0,
                      max_steps=2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0)  # fmt: skip
    return GRPOTrainer(
        model=model, reward_funcs=reward, args=args, rollout_func=ReplayRollout(RECORDS),
        train_dataset=Dataset.from_dict({"prompt": ["task a", "task b"]}),
    )  # fmt: skip


def spy(trainer: GRPOTrainer, seen: list[torch.Tensor]) -> None:
    """Record the advantages of every micro-batch that reaches `trainer.compute_loss` as it is now."""
    inner = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append(inputs["advantages"].detach().clone())
        return inner(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording


def test_upstream_loss_sees_the_better_episodes_only(tiny_model_dir, tmp_path):
    grpo_trainer = trainer(tiny_model_dir, tmp_path)
    upstream_sees: list[torch.Tensor] = []
    spy(grpo_trainer, upstream_sees)  # between the weighting and upstream's compute_loss
    assert weight_negative_advantages(grpo_trainer, 0.0) is grpo_trainer
    assert weight_negative_advantages(grpo_trainer, 0.0) is grpo_trainer  # the same weight again: a no-op
    with pytest.raises(ValueError, match="already weights negative advantages by 0.0"):
        weight_negative_advantages(grpo_trainer, 0.5)
    computed: list[torch.Tensor] = []
    spy(grpo_trainer, computed)  # what upstream's advantage computation produced
    before = {n: p.detach().clone() for n, p in grpo_trainer.model.named_parameters()}
    grpo_trainer.train()

    computed_all, seen_all = torch.cat(computed), torch.cat(upstream_sees)
    assert len(computed) == 4 and (computed_all < 0).any() and (computed_all > 0).any()
    assert torch.equal(seen_all, computed_all.clamp(min=0))
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in grpo_trainer.model.named_parameters())
    assert moved > 1e-4  # the better episodes alone still move the weights

    with pytest.raises(ValueError, match="between 0"):
        weight_negative_advantages(grpo_trainer, 1.5)
    plain = trainer(tiny_model_dir, tmp_path)
    loss = plain.compute_loss
    assert weight_negative_advantages(plain, 1.0).compute_loss == loss  # 1 is upstream's loss: nothing wrapped


def test_freeze_except_trains_the_named_parameters_only(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert grpo.freeze_except(model, r"^model\.norm\.weight$") == ["model.norm.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.norm.weight"]
    assert len(grpo.freeze_except(model, r"norm")) > 1  # again, with another pattern: that one decides
    assert model.model.embed_tokens.weight.requires_grad is False
    with pytest.raises(ValueError, match="matches no parameter"):
        grpo.freeze_except(model, r"^lm_head_of_another_model$")
    with pytest.raises(ValueError, match="negative_advantage_weight -1.0"):
        grpo.parse_args(["--model_name_or_path", "m", "--use_cpu", "--negative_advantage_weight", "-1"])
