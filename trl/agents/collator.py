"""`DataCollatorForAgentTrajectories`: SFT batches from agent trajectories, loss only on tokens the model produced.

A feature is either a recorded segment (a `trajectory.SegmentRecord`, or its JSON: `token_ids`, `mask`, ...), used as
recorded, or a conversation `{"messages": [...], "tools": [...]}`, rendered with the tokenizer's chat template one
assistant turn at a time (`render_conversation`): each assistant message is rendered behind the generation prompt
and appended as trainable, and the messages between assistant turns are appended with the same turn bridge the
gateway uses (`turns.py`), so every token's origin is known when it is appended. Masks are never recovered from
decoded text, and the history is never re-rendered, so templates that drop earlier reasoning or merge consecutive
tool results do not shift labels. `labels` are the token where the model produced it and -100 everywhere else
(system, user, tool results, role headers and other template tokens); the end-of-turn token the model emits is
trained, the template's text after it is not.

Truncation keeps the first `max_length` tokens by default (the task statement conditions every turn); with
`truncation_side="left"` it keeps the last ones. Not here: which tokens count as sampled (`masking.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .masking import MaskedTokens, last_turn_only
from .trajectory import SegmentRecord
from .turns import ANCHOR, Anchor, TemplateError, local_anchor, tokenizer_renderer


def render_conversation(
    tokenizer, messages: list[dict], tools: list[dict] | None = None, anchor: Anchor | None = None, **template_kwargs
) -> MaskedTokens:
    """Token ids of a conversation as a model generating its assistant turns would have seen and produced them.

    Assistant turns are trainable (mask 1); everything else is context (mask 0). Raises `TemplateError` if the
    chat template cannot be rendered turn by turn (e.g. it has no end-of-turn token after an assistant message).
    """
    render = tokenizer_renderer(tokenizer, tools, **template_kwargs)
    anchor = anchor or local_anchor(tokenizer, render)
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    tokens = MaskedTokens()
    if not assistants:
        tokens.add_context(render(messages, False))
        return tokens
    if assistants[0] == 0:
        raise ValueError("a conversation must start with a system or user message before the first assistant turn")
    tokens.add_context(render(messages[: assistants[0]], True))
    prompt = render(ANCHOR[:1], True, tokenize=False)
    for n, i in enumerate(assistants):
        if n:
            bridge = anchor.bridge(render(ANCHOR + messages[assistants[n - 1] + 1 : i], True), tokens.token_ids)
            if bridge is None:
                raise TemplateError("the chat template renders the stand-in history differently behind new messages")
            tokens.add_context(bridge)
        # the text after the generation prompt, tokenized on its own as the engine's output is (tokenizing it
        # together with the prompt can merge tokens across the boundary, e.g. "\n\n" + "{")
        full = render([*ANCHOR[:1], messages[i]], False, tokenize=False)
        turn = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        if not full.startswith(prompt) or anchor.end_of_turn not in turn:
            raise TemplateError(f"cannot isolate assistant message {i} in this chat template's rendering")
        tokens.add_sampled(turn[: turn.index(anchor.end_of_turn) + 1])
    return tokens


@dataclass
class DataCollatorForAgentTrajectories:
    """Pad agent trajectories into `input_ids`, `attention_mask` and `labels` (-100 where the model did not produce
    the token). Use as `data_collator=` of `SFTTrainer` (with `dataset_kwargs={"skip_prepare_dataset": True}` and
    `remove_unused_columns=False`) or of a `transformers.Trainer`.

    Args:
        tokenizer: The model's tokenizer (its chat template renders conversations; its pad token pads).
        max_length: Longest sequence kept; longer ones are cut (see `truncation_side`).
        truncation_side: `"right"` keeps the first `max_length` tokens, `"left"` the last.
        padding_side: `"right"` or `"left"`.
        pad_to_multiple_of: Pad the batch length up to a multiple of this.
        turns: `"all"` trains on every assistant turn; `"last"` only on the last one (completion-only).
        ignore_index: Label of untrained positions.
    """

    tokenizer: Any
    max_length: int | None = None
    truncation_side: str = "right"
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    turns: str = "all"
    ignore_index: int = -100
    _anchors: dict[str, Anchor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name, value, allowed in [
            ("truncation_side", self.truncation_side, ("right", "left")),
            ("padding_side", self.padding_side, ("right", "left")),
            ("turns", self.turns, ("all", "last")),
        ]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token first")

    def encode(self, feature: dict[str, Any] | SegmentRecord) -> MaskedTokens:
        """One feature's tokens and mask, before truncation and padding."""
        if isinstance(feature, SegmentRecord):
            tokens = feature.tokens
        elif "token_ids" in feature and "mask" in feature:
            tokens = SegmentRecord.from_json(feature, "feature").tokens
        elif "messages" in feature:
            tools = feature.get("tools") or None
            key = json.dumps(tools, sort_keys=True)
            if key not in self._anchors:
                self._anchors[key] = local_anchor(self.tokenizer, tokenizer_renderer(self.tokenizer, tools))
            tokens = render_conversation(self.tokenizer, feature["messages"], tools, anchor=self._anchors[key])
        else:
            raise ValueError(
                "each feature must be a recorded segment (`token_ids` and `mask`) or a conversation (`messages`); "
                f"got keys {sorted(feature)}"
            )
        return last_turn_only(tokens) if self.turns == "last" else tokens

    def __call__(self, features: list[dict[str, Any] | SegmentRecord]) -> dict[str, Any]:
        import torch

        rows = []
        for feature in features:
            tokens = self.encode(feature)
            ids, labels = tokens.token_ids, tokens.labels(self.ignore_index)
            if self.max_length is not None and len(ids) > self.max_length:
                cut = slice(0, self.max_length) if self.truncation_side == "right" else slice(-self.max_length, None)
                ids, labels = ids[cut], labels[cut]
            rows.append((ids, labels))
        width = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for ids, labels in rows:
            pad = width - len(ids)
            parts = {
                "input_ids": (ids, [self.tokenizer.pad_token_id] * pad),
                "attention_mask": ([1] * len(ids), [0] * pad),
                "labels": (labels, [self.ignore_index] * pad),
            }
            for key, (values, padding) in parts.items():
                batch[key].append(values + padding if self.padding_side == "right" else padding + values)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
