"""The tiny coder (`examples/code_repair/tiny_coder.py`): its synthetic episodes are the scripted expert's episodes
turn for turn, its data and training run end to end (small), and the shipped checkpoint is the one the demo can
load: same tokenizer as `trl.agents.tiny_model`, the recorded shape, seen tasks from the training split only."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from code_repair import tiny_coder
from code_repair.data import Workspaces, command_env, task_dataset
from code_repair.scripted_model import HINT
from code_repair.sft import write_expert_trajectories
from trl.agents.tiny_model import TinyModelConfig, build_tokenizer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy-cache")


def test_a_synthetic_episode_is_the_scripted_experts_episode_turn_for_turn(cache, tmp_path):
    row = next(r for r in task_dataset("toy", "train", cache) if r["instance_id"] == "toy__calc-1")
    (real,) = write_expert_trajectories([row], Workspaces(cache, env=command_env("toy")), tmp_path / "expert.jsonl")
    assert real["reward"] == 1.0
    hint = HINT.search(row["problem_statement"]).groupdict()
    grep_output = real["messages"][3]["content"]
    number, line = grep_output.rstrip("\n").split(":", 1)
    edit = (hint["file"], int(number), line[: len(line) - len(line.lstrip())], hint["search"], hint["replace"])
    statement = row["problem_statement"].split("\n\nHint:")[0]
    synthetic = tiny_coder.synthetic_episode(edit, statement, random.Random(0))

    assert [m["role"] for m in synthetic] == [m["role"] for m in real["messages"]]
    for ours, theirs in zip(synthetic, real["messages"], strict=True):
        if ours["role"] == "assistant":
            assert ours.get("tool_calls") == theirs.get("tool_calls") or (
                not ours.get("tool_calls") and ours["content"] == theirs["content"]
            )
        elif ours["role"] == "tool" and "passed in" in theirs["content"]:  # the test run: same form, other numbers
            pattern = r"\.+ +\[100%\]\n\d+ passed in \d\.\d\ds\n"
            assert re.fullmatch(pattern, ours["content"]) and re.fullmatch(pattern, theirs["content"])
        else:
            assert ours["content"] == theirs["content"]


def test_mutate_makes_one_small_bug_or_none():
    rng = random.Random(0)
    assert tiny_coder.mutate("if a < b:", rng) == "if a <= b:"
    assert tiny_coder.mutate("x = y[0]", rng) == "x = y[1]"
    assert tiny_coder.mutate("count = 41", rng) == "count = 42"
    assert tiny_coder.mutate("return value", rng) in ("retur value", "return valu")
    assert tiny_coder.mutate("x = y", rng) is None  # no operator, number or 4-letter name: no bug to make


def test_data_and_training_run_end_to_end_and_record_what_they_measured(cache, tmp_path):
    data = tiny_coder.make_data(tmp_path / "data", synthetic=24, probes=4, cache_dir=str(cache))
    # two probes of each kind: the untrained model generates to each probe's full length (all ~80: 33 s of CPU)
    written = torch.load(data)
    assert {(s, p["tool"]) for s, probes in written["probes"].items() for p in probes} == {
        (s, t) for s in ("held_out", "unseen", "synthetic") for t in ("grep", "apply_patch")
    }
    for split, probes in written["probes"].items():
        written["probes"][split] = [
            p for t in ("grep", "apply_patch") for p in [q for q in probes if q["tool"] == t][:2]
        ]
    torch.save(written, data)
    report = tiny_coder.train(data, tmp_path / "coder", steps=2, batch_size=2, device="cpu")
    assert set(report["exact_match"]) == {f"{s}/{t}" for s in ("held_out", "unseen", "synthetic")
                                          for t in ("grep", "apply_patch")}  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in report["exact_match"].values())
    saved = json.loads((tmp_path / "coder" / "build.json").read_text())
    assert saved["exact_match"] == report["exact_match"] and saved["steps"] == 2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "coder")
    assert model.config.num_hidden_layers == tiny_coder.SHAPE["num_hidden_layers"]


def test_the_shipped_tiny_coder_is_what_the_demo_expects(cache, tmp_path):
    built = tiny_coder.shipped_build()
    config = json.loads((tiny_coder.SHIPPED / "config.json").read_text())
    assert {k: config[k] for k in tiny_coder.SHAPE} == tiny_coder.SHAPE == built["shape"]
    train_ids = {r["instance_id"] for r in task_dataset("toy", "train", cache)}
    test_ids = {r["instance_id"] for r in task_dataset("toy", "test", cache)}
    assert set(built["seen_tasks"]) == set(tiny_coder.SEEN_TASKS) <= train_ids
    assert not set(built["seen_tasks"]) & test_ids
    build_tokenizer(TinyModelConfig().vocab_size).save_pretrained(tmp_path)  # what `make demo --model tiny` builds
    assert (tmp_path / "tokenizer.json").read_text() == (tiny_coder.SHIPPED / "tokenizer.json").read_text()


def test_sft_refuses_tasks_that_are_not_in_the_split(cache, tmp_path):
    from code_repair import sft

    argv = ["--model_name_or_path", "unused", "--trajectories", str(tmp_path / "t.jsonl"),
            "--output_dir", str(tmp_path / "o"), "--cache_dir", str(cache), "--write_expert", str(tmp_path / "t.jsonl"),
            "--tasks", "toy__calc-1", "toy__calc-7", "nope", "--use_cpu"]  # fmt: skip
    with pytest.raises(SystemExit, match="not in .*toy-suite split 'train': nope, toy__calc-7"):
        sft.main(argv)
    assert not (tmp_path / "t.jsonl").exists()
