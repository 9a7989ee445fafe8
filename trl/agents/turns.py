"""Turn bridging: append new chat messages to a token history without re-rendering the history.

Chat templates are not prefix-stable: Qwen3-style templates drop the reasoning of assistant turns before the last
user message and merge consecutive tool results into one turn, so rendering the whole conversation again (or one
message at a time and diffing) changes tokens the model already saw or sampled. Instead, new messages are rendered
behind a fixed two-message stand-in history (`ANCHOR`: a user turn and an assistant turn whose content is "."), the
stand-in's tokens are cut off, and what is left (the template's text after an assistant turn, the new messages, the
generation prompt) is appended to the history as it is.

Used by the gateway (rendering with vLLM's render endpoint) and by the SFT collator (rendering with the tokenizer),
so both build token sequences the same way. Not here: which tokens are trained on (`masking.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


ANCHOR_CONTENT = "."
ANCHOR = [{"role": "user", "content": ANCHOR_CONTENT}, {"role": "assistant", "content": ANCHOR_CONTENT}]


class TemplateError(ValueError):
    """The chat template cannot be bridged (e.g. it renders no end-of-turn token after an assistant message)."""


@dataclass
class Anchor:
    """The rendered stand-in history: its ids, where the text after its end-of-turn token starts, that token."""

    token_ids: list[int]
    tail_start: int
    end_of_turn: int

    @classmethod
    def find(cls, rendered: list[int], marker_ids: list[int]) -> Anchor:
        """Locate the assistant's end-of-turn token in `rendered` (= `ANCHOR` rendered without a generation prompt):
        the token right after the last occurrence of the anchor content's ids `marker_ids`."""
        end = _rfind(rendered, marker_ids)
        if end < 0 or end + len(marker_ids) >= len(rendered):
            raise TemplateError("cannot locate the end of an assistant turn in this chat template's rendering")
        end += len(marker_ids)
        return cls(rendered, end + 1, rendered[end])

    def bridge(self, rendered: list[int], history: list[int]) -> list[int] | None:
        """Tokens to append to `history` for new messages rendered as `ANCHOR + messages` (with the generation
        prompt); `None` when the template renders the stand-in differently once more messages follow."""
        if rendered[: len(self.token_ids)] != self.token_ids:
            return None
        bridge = rendered[self.tail_start :]
        if not history or history[-1] != self.end_of_turn:
            bridge = [self.end_of_turn, *bridge]  # the last turn stopped early (length, stop string): close it
        return bridge


def _rfind(haystack: list[int], needle: list[int]) -> int:
    for start in range(len(haystack) - len(needle), -1, -1):
        if haystack[start : start + len(needle)] == needle:
            return start
    return -1


Render = Callable[..., Any]  # render(messages, add_generation_prompt, tokenize=True) -> token ids (or text)


def tokenizer_renderer(tokenizer, tools: list[dict] | None = None, **template_kwargs: Any) -> Render:
    """A `Render` using the tokenizer's own chat template (what `transformers` and TRL's trainers use)."""

    def render(messages: list[dict], add_generation_prompt: bool, tokenize: bool = True) -> list[int] | str:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False, **template_kwargs
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text

    return render


def local_anchor(tokenizer, render: Render) -> Anchor:
    marker = tokenizer(ANCHOR_CONTENT, add_special_tokens=False)["input_ids"]
    return Anchor.find(render(ANCHOR, False), marker)
