"""`DataCollatorForAgentTrajectories` on real chat templates (the tiny model's Qwen3-like one and a Llama-3-style one
in tests/data): labels exactly on assistant-produced tokens, zero loss elsewhere, agreement with transformers'
assistant masks where those work, the naive per-message rendering going wrong where ours does not, SFT with upstream
`SFTTrainer`, and the best-of-N filter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl import SFTConfig, SFTTrainer
from trl.agents import DataCollatorForAgentTrajectories, filter_by_reward
from trl.agents.collator import render_conversation


DATA = Path(__file__).parent / "data"
TOOLS = [{"type": "function", "function": {"name": "shell", "description": "Run a command.", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]  # fmt: skip


def call(name: str, command: str, i: int) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": {"command": command}}}


# Earlier reasoning (dropped by Qwen3-style templates once a later user turn exists) and consecutive tool results
# (merged into one turn): the two cases where rendering one message at a time goes wrong.
AGENT_CONVERSATION = [
    {"role": "system", "content": "You fix bugs in repositories."},
    {"role": "user", "content": "The test test_add fails. Fix it."},
    {"role": "assistant", "reasoning_content": "Look at the code first.", "content": "",
     "tool_calls": [call("shell", "cat calc.py", 0), call("shell", "cat test_calc.py", 1)]},
    {"role": "tool", "tool_call_id": "call_0", "content": "def add(a, b): return a - b"},
    {"role": "tool", "tool_call_id": "call_1", "content": "assert add(2, 2) == 4"},
    {"role": "assistant", "content": "add subtracts; it should add.", "tool_calls": [call("shell", "sed -i s/-/+/ calc.py", 2)]},
    {"role": "tool", "tool_call_id": "call_2", "content": "(no output)"},
    {"role": "assistant", "content": "Fixed: add now returns a + b."},
    {"role": "user", "content": "Thanks. Anything else?"},
    {"role": "assistant", "reasoning_content": "Nothing left to do.", "content": "No, the test passes now."},
]  # fmt: skip
# Conversations where transformers' assistant masks (`{% generation %}`) are right: no reasoning, one tool result.
SIMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "List files."},
        {"role": "assistant", "content": "", "tool_calls": [call("shell", "ls", 0)]},
        {"role": "tool", "tool_call_id": "call_0", "content": "a.py b.py"},
        {"role": "assistant", "content": "Two files: a.py and b.py."},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Still two."},
    ],
]


LLAMA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module", params=["qwen3_like", "llama3_like"])
def family(request, tiny_model_dir):
    """(the tiny tokenizer rendering with the family's template, the same template with generation markers, the
    family's end-of-turn token)."""

    def tokenizer_with(template: str | None):
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        if request.param == "llama3_like":
            tokenizer.add_special_tokens({"additional_special_tokens": LLAMA_SPECIALS})
        if template is not None:
            tokenizer.chat_template = template
        return tokenizer

    if request.param == "qwen3_like":
        return tokenizer_with(None), tokenizer_with((DATA / "qwen3_like_generation.jinja").read_text()), "<|im_end|>"
    llama = (DATA / "llama3_like.jinja").read_text()
    return tokenizer_with(llama), tokenizer_with(llama), "<|eot_id|>"


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels:
        if label != -100:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def problems(tokenizer, ids: list[int], labels: list[int], messages: list[dict], end: str) -> list[str]:
    """What is wrong with `labels` for `messages`: every assistant turn (reasoning, content, tool calls, its
    end-of-turn token) must be labelled and nothing else."""
    found = []
    runs = [tokenizer.decode(run) for run in labelled_runs(labels)]
    assistants = [m for m in messages if m["role"] == "assistant"]
    if len(runs) != len(assistants):
        found.append(f"{len(runs)} labelled runs for {len(assistants)} assistant turns")
    for text, message in zip(runs, assistants, strict=False):
        expected = [message["content"]]
        if "reasoning" in tokenizer.chat_template:  # templates that render reasoning must have it labelled
            expected.append(message.get("reasoning_content") or "")
        expected += [c["function"]["arguments"]["command"] for c in message.get("tool_calls", [])]
        found += [f"{part!r} missing from labelled {text!r}" for part in expected if part not in text]
        if not text.endswith(end):
            found.append(f"labelled turn does not end with {end}: {text!r}")
        for marker in ("<|im_start|>", "<|start_header_id|>", "<tool_response>", "user", "system"):
            if marker in text:
                found.append(f"template or environment text {marker!r} labelled: {text!r}")
    for message in messages:
        if message["role"] in ("tool", "user", "system") and any(message["content"] in run for run in runs):
            found.append(f"{message['role']} content labelled: {message['content']!r}")
    if [i for i, label in zip(ids, labels, strict=True) if label != -100] != [
        t for run in labelled_runs(labels) for t in run
    ]:
        found.append("labels are not the input ids")
    return found


def test_labels_are_exactly_the_assistant_tokens_and_loss_elsewhere_is_zero(family, tiny_model_dir):
    tokenizer, _, end = family
    collator = DataCollatorForAgentTrajectories(tokenizer)
    batch = collator([{"messages": AGENT_CONVERSATION, "tools": TOOLS}, {"messages": SIMPLE_CONVERSATIONS[1]}])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert problems(tokenizer, ids, labels, AGENT_CONVERSATION, end) == []
    text = tokenizer.decode(ids)
    assert "def add(a, b): return a - b" in text and "You fix bugs" in text  # the context is all there
    assert problems(tokenizer, batch["input_ids"][1].tolist(), batch["labels"][1].tolist(), SIMPLE_CONVERSATIONS[1], end) == []  # fmt: skip

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    assert per_token[targets == -100].abs().max().item() == 0.0
    assert (per_token[targets != -100] > 0).all()
    loss = model(**batch).loss
    assert torch.allclose(loss, per_token[targets != -100].mean(), atol=1e-6)


def test_agrees_with_transformers_assistant_masks_where_they_work(family):
    """Qwen3-like: token for token. Llama-3-like with this byte-level BPE: the same text and the same trained text,
    but transformers tokenizes the whole conversation at once, merging the "\n\n" that ends each generation
    prompt with the assistant's first characters differently than the engine, which tokenizes the prompt alone
    and then samples; ours follows the engine."""
    _, tokenizer, end = family
    collator = DataCollatorForAgentTrajectories(tokenizer)
    for messages in SIMPLE_CONVERSATIONS:
        theirs = tokenizer.apply_chat_template(
            messages, tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ours = collator.encode({"messages": messages, "tools": TOOLS})
        ids, mask = list(theirs["input_ids"]), list(theirs["assistant_masks"])
        their_runs = [
            tokenizer.decode(r) for r in labelled_runs([t if m else -100 for t, m in zip(ids, mask, strict=True)])
        ]
        assert [tokenizer.decode(r) for r in labelled_runs(ours.labels())] == their_runs
        assert tokenizer.decode(ids).startswith(tokenizer.decode(ours.token_ids))
        if end == "<|im_end|>":
            n = len(ours)  # theirs also has the template's text after the last end-of-turn token, never trained
            assert ours.token_ids == ids[:n] and ours.mask == mask[:n] and not any(mask[n:])


def naive_labels(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Render the conversation one message longer each time and label what each assistant message added."""
    labels, previous = [], []
    for k in range(1, len(messages) + 1):
        text = tokenizer.apply_chat_template(messages[:k], tools=TOOLS, tokenize=False)
        current = tokenizer(text, add_special_tokens=False)["input_ids"]
        added = current[len(previous) :]
        labels += added if messages[k - 1]["role"] == "assistant" else [-100] * len(added)
        previous = current
    return previous, labels[: len(previous)]


def test_naive_per_message_rendering_goes_wrong_where_ours_is_right(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, labels = naive_labels(tokenizer, AGENT_CONVERSATION)
    naive = problems(tokenizer, ids, labels, AGENT_CONVERSATION, "<|im_end|>")
    assert naive, "the naive rendering should mislabel this conversation"
    print("naive per-message rendering:", *naive, sep="\n  ")
    ours = render_conversation(tokenizer, AGENT_CONVERSATION, TOOLS)
    assert problems(tokenizer, ours.token_ids, ours.labels(), AGENT_CONVERSATION, "<|im_end|>") == []
    # the earlier reasoning is kept where the model produced it, although a full re-render drops it
    full = tokenizer.apply_chat_template(AGENT_CONVERSATION, tools=TOOLS, tokenize=False)
    assert "Look at the code first." not in full and "Look at the code first." in tokenizer.decode(ours.token_ids)


def test_segments_padding_truncation_and_last_turn_only(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = render_conversation(tokenizer, AGENT_CONVERSATION, TOOLS)
    segment = {"token_ids": tokens.token_ids, "mask": tokens.mask}  # the gateway's trajectory format
    n = len(tokens)

    left = DataCollatorForAgentTrajectories(tokenizer, padding_side="left", pad_to_multiple_of=64)
    batch = left([segment, {"token_ids": tokens.token_ids[:10], "mask": tokens.mask[:10]}])
    assert batch["input_ids"].shape[1] % 64 == 0 and batch["input_ids"].shape[1] >= n
    assert batch["labels"][0, -n:].tolist() == tokens.labels() and batch["attention_mask"][1, :-10].sum() == 0
    assert (batch["input_ids"][1, :-10] == tokenizer.pad_token_id).all()

    cut = DataCollatorForAgentTrajectories(tokenizer, max_length=40)([segment])
    assert cut["input_ids"][0].tolist() == tokens.token_ids[:40]
    cut = DataCollatorForAgentTrajectories(tokenizer, max_length=40, truncation_side="left")([segment])
    assert cut["labels"][0].tolist() == tokens.labels()[-40:]

    last = DataCollatorForAgentTrajectories(tokenizer, turns="last")([segment])["labels"][0].tolist()
    runs = labelled_runs(last)
    assert len(runs) == 1 and runs[0] == labelled_runs(tokens.labels())[-1]

    with pytest.raises(ValueError, match="padding_side"):
        DataCollatorForAgentTrajectories(tokenizer, padding_side="middle")
    with pytest.raises(ValueError, match="recorded segment"):
        DataCollatorForAgentTrajectories(tokenizer)([{"text": "hello"}])
    with pytest.raises(ValueError, match="must start with"):
        render_conversation(tokenizer, [{"role": "assistant", "content": "hi"}])


def test_sft_trainer_with_the_collator_lowers_the_loss(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {"messages": AGENT_CONVERSATION, "tools": TOOLS},
        *({"messages": m, "tools": TOOLS} for m in SIMPLE_CONVERSATIONS),
    ] * 4
    data = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=20,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorForAgentTrajectories(tokenizer),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 20
    print(f"SFT loss: first 3 steps {sum(losses[:3]) / 3:.3f}, last 3 steps {sum(losses[-3:]) / 3:.3f}")
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3


def test_filter_by_reward_keeps_the_best_trajectories():
    data = Dataset.from_dict({"task": ["a", "a", "a", "b", "b"], "reward": [0.9, 0.95, 0.2, 0.85, 0.5]})
    assert filter_by_reward(data, threshold=0.8)["reward"] == [0.9, 0.95, 0.85]
    best = filter_by_reward(data, threshold=0.8, group_column="task", top_k=1)
    assert sorted(zip(best["task"], best["reward"], strict=True)) == [("a", 0.95), ("b", 0.85)]
    with pytest.raises(ValueError, match="score"):
        filter_by_reward(data, threshold=0.8, reward_column="score")
