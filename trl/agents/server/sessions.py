"""What the gateway records per agent episode: sessions, segments, turns, and when a request extends a segment.

A session is a list of segments. A segment is one token-exact history (`MaskedTokens`) plus the chat messages it
stands for. A new request *extends* the current segment when the messages it sends start with exactly the
messages already recorded (compared by `canonical_message`, which ignores what clients legitimately drop or
rewrite when they echo a reply back: ids, `null` fields, reasoning text, JSON spacing of tool arguments). Then only
the new messages are rendered and appended; otherwise the agent edited or dropped history, and a new segment
starts (a *fork*), leaving the old one intact.

With a journal folder, every session is also an append-only JSONL file there (one line when it is created, one
line per recorded turn with what the turn appended), so a restarted gateway reloads every trajectory it had
recorded; deleting a session removes its file. A last line cut short by a crash is skipped (and counted in
`SessionStore.torn_lines`); a damaged line anywhere else is an error naming the file.

Not here: HTTP, rendering or generation (see `gateway.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..masking import MaskedTokens


SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
logger = logging.getLogger("trl.agents.server")


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


class JournalError(RuntimeError):
    """A session journal that cannot be read back."""


class SessionStore:
    """Sessions by id, in memory, and in `journal_dir` when given (see the module docstring)."""

    def __init__(self, journal_dir: str | os.PathLike | None = None):
        self._sessions: dict[str, Session] = {}
        self._written: dict[str, list[tuple[int, int, int]]] = {}  # per segment: tokens, messages, turns journaled
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self.torn_lines = 0
        if self.journal_dir is not None:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.journal_dir.glob("*.jsonl")):
                self._load(path)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def create(self, session_id: str, replica: str) -> Session:
        session = self._sessions[session_id] = Session(session_id, replica)
        self._written[session_id] = []
        self._append(session_id, {"session_id": session_id, "replica": replica, "created": session.created})
        return session

    def delete(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        self._written.pop(session_id, None)
        if session is not None and self.journal_dir is not None:
            self._path(session_id).unlink(missing_ok=True)
        return session

    def save(self, session: Session) -> None:
        """Journal what `session` recorded since the last call (call it after each turn, under the session lock)."""
        if self.journal_dir is None:
            return
        written = self._written.setdefault(session.session_id, [])
        for index in range(max(len(written) - 1, 0), len(session.segments)):
            segment = session.segments[index]
            tokens, messages, turns = written[index] if index < len(written) else (0, 0, 0)
            now = (len(segment.tokens), len(segment.messages), len(segment.turns))
            if index < len(written):
                written[index] = now
            else:
                written.append(now)
            if (tokens, messages, turns) == now:
                continue
            t = segment.tokens
            self._append(session.session_id, {
                "segment": index, "forks": session.forks,
                "token_ids": t.token_ids[tokens:], "mask": t.mask[tokens:], "logprobs": t.logprobs[tokens:],
                "messages": segment.messages[messages:], "turns": [vars(x) for x in segment.turns[turns:]],
            })  # fmt: skip

    def _path(self, session_id: str) -> Path:
        return self.journal_dir / f"{session_id}.jsonl"

    def _append(self, session_id: str, record: dict[str, Any]) -> None:
        if self.journal_dir is None:
            return
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self._path(session_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one write per record: a crash leaves at most the last line torn
        finally:
            os.close(fd)

    def _load(self, path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):  # torn by a crash mid-write: everything before it is intact
                    self.torn_lines += 1
                    logger.warning("session journal %s: last line is incomplete; skipped", path)
                    break
                raise JournalError(f"session journal {path}, line {number}, is damaged: {exc}") from exc
        if not records or "session_id" not in records[0]:
            raise JournalError(f"session journal {path} does not start with a session record")
        head = records[0]
        session = Session(head["session_id"], head["replica"], created=head["created"])
        for record in records[1:]:
            index = record["segment"]
            while len(session.segments) <= index:
                session.segments.append(Segment())
            segment = session.segments[index]
            segment.tokens.token_ids.extend(record["token_ids"])
            segment.tokens.mask.extend(record["mask"])
            segment.tokens.logprobs.extend(record["logprobs"])
            segment.messages.extend(record["messages"])
            segment.turns.extend(Turn(**turn) for turn in record["turns"])
            session.forks = record["forks"]
        self._sessions[session.session_id] = session
        self._written[session.session_id] = [(len(s.tokens), len(s.messages), len(s.turns)) for s in session.segments]
