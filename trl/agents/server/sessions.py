"""What the gateway records per agent episode: sessions, segments, turns, and when a request extends a segment.

A session is a list of segments. A segment is one token-exact history (`MaskedTokens`) plus the chat messages it
stands for. A new request *extends* the current segment when the messages it sends start with exactly the
messages already recorded (compared by `canonical_message`, which ignores what clients legitimately drop or
rewrite when they echo a reply back: ids, `null` fields, reasoning text, JSON spacing of tool arguments). Then only
the new messages are rendered and appended; otherwise the agent edited or dropped history, and a new segment
starts (a *fork*), leaving the old one intact.

Not here: HTTP, rendering or generation (see `gateway.py`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..masking import MaskedTokens


SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass
class Turn:
    """One generation inside a segment."""

    policy_version: int
    finish_reason: str | None
    prompt_tokens: int  # tokens of the segment before this turn's sampled ones
    completion_tokens: int
    tool_calls: list[str] = field(default_factory=list)  # names of the tools the turn called, in order
    seconds: float = 0.0  # engine time of the turn (generation only, not rendering or parsing)


@dataclass
class Segment:
    """One token-exact history and the canonical form of the messages it represents."""

    tokens: MaskedTokens = field(default_factory=MaskedTokens)
    messages: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_ids": self.tokens.token_ids,
            "mask": self.tokens.mask,
            "logprobs": self.tokens.logprobs,
            "prompt_length": self.tokens.prompt_length,
            "turns": [vars(turn) for turn in self.turns],
        }


@dataclass
class Session:
    """The recorded segments of one agent episode, pinned to one replica."""

    session_id: str
    replica: str
    segments: list[Segment] = field(default_factory=list)
    forks: int = 0
    created: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def current(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    def start_segment(self) -> Segment:
        """Open a new segment; every segment after the first counts as a fork."""
        if self.segments:
            self.forks += 1
        self.segments.append(Segment())
        return self.segments[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "replica": self.replica,
            "forks": self.forks,
            "segments": [segment.to_dict() for segment in self.segments],
        }


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def canonical_message(message: dict[str, Any]) -> str:
    """A string equal for two messages exactly when the chat template would see the same turn.

    Kept: role, text content, name, and for assistant turns the tool calls' names and parsed arguments.
    Ignored: ids, `null`/empty fields clients add, and reasoning (clients often drop it when echoing a reply; the
    recorded tokens keep what the model really produced either way).
    """
    role = message.get("role")
    canonical: dict[str, Any] = {"role": role, "content": _text(message.get("content"))}
    if message.get("name"):
        canonical["name"] = message["name"]
    if role == "assistant":
        calls = message.get("tool_calls") or []
        canonical["tool_calls"] = [
            [call.get("function", {}).get("name"), _arguments(call.get("function", {}).get("arguments"))]
            for call in calls
        ]
    return json.dumps(canonical, sort_keys=True, ensure_ascii=False)


def new_messages(recorded: list[str], messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages appended after `recorded`, or `None` when `messages` does not extend `recorded`."""
    if not recorded or len(messages) <= len(recorded):
        return None
    for canonical, message in zip(recorded, messages, strict=False):
        if canonical != canonical_message(message):
            return None
    return messages[len(recorded) :]


class SessionStore:
    """Sessions by id, in memory."""

    def __init__(self):
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def create(self, session_id: str, replica: str) -> Session:
        session = self._sessions[session_id] = Session(session_id, replica)
        return session

    def delete(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)
