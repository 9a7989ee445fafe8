"""The tiny model: reproducible bytes, the Qwen3-like template quirks that make drift real, vocabulary layout."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoTokenizer

from tests.helpers import MARKUP_IDS
from trl.agents.tiny_model import MARKUP_TOKENS, TinyModelConfig, build, digest


TOOLS = [{"type": "function", "function": {"name": "shell", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_build_is_byte_identical(tmp_path, tiny_model_dir):
    other = build(tmp_path / "again")
    assert digest(other) == digest(tiny_model_dir)
    assert set(digest(other)) >= {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"}


def test_another_seed_changes_only_the_weights(tmp_path, tiny_model_dir):
    other = digest(build(tmp_path / "seed1", TinyModelConfig(seed=1)))
    base = digest(tiny_model_dir)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert other["tokenizer.json"] == base["tokenizer.json"]


def test_size_and_shape(tiny_model_dir):
    from pathlib import Path

    total = sum(p.stat().st_size for p in Path(tiny_model_dir).iterdir())
    assert 0.5e6 < total < 3e6  # "about 1 MB"
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen3" and config.head_dim == 64


def test_head_dim_other_than_64_is_refused():
    with pytest.raises(ValueError, match="head_dim 64"):
        TinyModelConfig(hidden_size=64, num_attention_heads=4)


def test_markup_tokens_are_single_and_survive_skip_special(tokenizer):
    for token in MARKUP_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert tokenizer.decode(ids, skip_special_tokens=True) == token
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in MARKUP_IDS} == MARKUP_IDS  # tests rely on them
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end
    assert tokenizer.decode([im_end], skip_special_tokens=True) == ""


def test_template_renders_tools_and_tool_calls(tokenizer):
    call = {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": {"cmd": "ls", "all": True}}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "a.py"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "shell", "arguments": {"cmd": "ls", "all": true}}\n</tool_call>'
        in text
    )
    assert "<|im_start|>user\n<tool_response>\na.py\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_consecutive_tool_messages_merge_into_one_turn(tokenizer):
    base = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "ok"}]
    tools = [{"role": "tool", "content": "one"}, {"role": "tool", "content": "two"}]
    together = tokenizer.apply_chat_template(base + tools, tokenize=False)
    assert together.count("<|im_start|>user") == 2  # the user turn and one merged tool turn
    assert "</tool_response>\n<tool_response>" in together


def test_reasoning_is_dropped_once_a_new_user_message_follows(tokenizer):
    turn = {"role": "assistant", "content": "done", "reasoning_content": "think hard"}
    first = tokenizer.apply_chat_template([{"role": "user", "content": "a"}, turn], tokenize=False)
    later = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a"}, turn, {"role": "user", "content": "b"}], tokenize=False
    )
    assert "<think>\nthink hard\n</think>\n\ndone" in first
    assert "think hard" not in later


def test_enable_thinking_false_adds_an_empty_think_block(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
