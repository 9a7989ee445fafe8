"""What the gateway records per agent episode: sessions, segments, turns, and when a request extends a segment.

A session is a list of segments. A segment is one token-exact history with its turns (a `trajectory.SegmentRecord`)
plus the chat messages it stands for (kept here, not on the wire). A new request *extends* the current segment when
the messages it sends start with exactly the messages already recorded (compared by `canonical_message`, which
ignores what clients legitimately drop or rewrite when they echo a reply back: ids, `null` fields, reasoning text,
JSON spacing of tool arguments). Then only the new messages are rendered and appended; otherwise the agent edited or
dropped history, and a new segment starts (a *fork*), leaving the old one intact.

A session answers its recording as a `trajectory.Trajectory` (`Session.trajectory`): the trajectory's JSON is
written by that module only.

With a journal folder, every session is also an append-only JSONL file there (one line when it is created, one
line per recorded turn with what the turn appended; the format is `journal.py`'s), so a restarted gateway reloads
every trajectory it had recorded; deleting a session removes its file.

A deleted session stays closed: its id is remembered (the last `CLOSED_KEPT` ids; with a journal folder also there,
so across restarts), so an agent that outlives its episode and calls again is refused (`SessionClosed`, 410)
instead of silently opening a fresh session that nobody reads and that holds memory. A last line cut short by a crash is skipped
(and counted in `SessionStore.torn_lines`); a damaged line anywhere else is an error naming the file.

Not here: HTTP, rendering or generation (see `gateway.py`), the trajectory's and the journal's formats
(`trajectory.py`, `journal.py`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import journal
from ..journal import JournalFile
from ..trajectory import SegmentRecord, Trajectory
from .upstream import decode, encode_sorted


SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
CLOSED_KEPT = 200_000  # deleted session ids remembered (~100 bytes each)


class SessionClosed(Exception):
    """A request for a session the trainer already deleted (its episode is over)."""

    def __init__(self, session_id: str):
        super().__init__(
            f"session {session_id[:200]!r} is closed: its episode ended (the trainer read and deleted it, e.g. after "
            "the episode's deadline) and it takes no more turns; a new episode needs a new session id"
        )
        self.session_id = session_id


@dataclass
class Segment(SegmentRecord):
    """One token-exact history with its turns (`SegmentRecord`) and the canonical form of the messages it
    represents (gateway only: not on the wire)."""

    messages: list[str] = field(default_factory=list)


@dataclass
class Session:
    """The recorded segments of one agent episode, pinned to one replica."""

    session_id: str
    replica: str
    segments: list[Segment] = field(default_factory=list)
    forks: int = 0
    created: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    responses: dict[str, list[dict]] = field(default_factory=dict, repr=False)  # Responses API state, not journaled

    @property
    def current(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    def start_segment(self) -> Segment:
        """Open a new segment; every segment after the first counts as a fork."""
        if self.segments:
            self.forks += 1
        self.segments.append(Segment())
        return self.segments[-1]

    def trajectory(self) -> Trajectory:
        """The recording as it goes on the wire (sharing the session's lists: serialise it under the lock)."""
        return Trajectory(self.session_id, self.replica, self.forks, list(self.segments))

    @classmethod
    def from_journal(cls, recorded: JournalFile) -> Session:
        """The session a journal file recorded, as it was when its last line was written."""
        t = recorded.trajectory
        messages = [[_recanonical(m) for m in ms] for ms in recorded.messages]
        segments = [Segment(s.tokens, s.turns, m) for s, m in zip(t.segments, messages, strict=True)]
        return cls(t.session_id, t.replica, segments, t.forks, recorded.created)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _arguments(arguments: Any) -> Any:
    """Tool-call arguments parsed when they are JSON (so that spacing and key order do not matter), else as sent.
    msgspec's parser: it refuses what it could not write back (NaN, lone surrogates), which then stay text."""
    if isinstance(arguments, str):
        try:
            return decode(arguments.encode("utf-8", "surrogatepass"))
        except ValueError:
            return arguments
    return arguments


def canonical_message(message: dict[str, Any]) -> str:
    """A string equal for two messages exactly when the chat template would see the same turn.

    Kept: role, text content, name, and for assistant turns the tool calls' names and parsed arguments.
    Ignored: ids, `null`/empty fields clients add, whitespace around the content (a streamed reply has the "\n\n"
    before a tool call that the non-streamed answer and the Messages and Responses APIs drop), and reasoning
    (clients often drop it when echoing a reply). The recorded tokens keep what the model produced either way.
    """
    role = message.get("role")
    canonical: dict[str, Any] = {"role": role, "content": _text(message.get("content")).strip()}
    if message.get("name"):
        canonical["name"] = message["name"]
    if role == "assistant":
        calls = message.get("tool_calls") or []
        canonical["tool_calls"] = [
            [call.get("function", {}).get("name"), _arguments(call.get("function", {}).get("arguments"))]
            for call in calls
        ]
    try:
        return encode_sorted(canonical)  # msgspec: 10x json.dumps' speed on long messages
    except UnicodeEncodeError:  # a lone surrogate (only Python callers can pass one; JSON bodies are refused)
        return json.dumps(canonical, sort_keys=True)


def _recanonical(text: str) -> str:
    """A canonical message read from a journal, in this version's spelling (older ones wrote `json.dumps`'); text
    that is not JSON is kept as it is (it matches no message, so the session's next turn starts a new segment)."""
    try:
        return encode_sorted(json.loads(text))
    except ValueError:
        return text


def new_messages(recorded: list[str], messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages appended after `recorded`, or `None` when `messages` does not extend `recorded`."""
    if not recorded or len(messages) <= len(recorded):
        return None
    for canonical, message in zip(recorded, messages, strict=False):
        if canonical != canonical_message(message):
            return None
    return messages[len(recorded) :]


class SessionStore:
    """Sessions by id, in memory, and in `journal_dir` when given (see the module docstring)."""

    def __init__(self, journal_dir: str | os.PathLike | None = None):
        self._sessions: dict[str, Session] = {}
        self._written: dict[str, list[tuple[int, int, int]]] = {}  # per segment: tokens, messages, turns journaled
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()  # deleted ids, oldest first
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self.torn_lines = 0
        if self.journal_dir is not None:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            self._closed.update(dict.fromkeys(journal.read_closed(self.journal_dir, CLOSED_KEPT)))
            for recorded in journal.read_folder(self.journal_dir):
                self.torn_lines += int(recorded.torn)
                self._adopt(Session.from_journal(recorded))

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> Session | None:
        """The open session `session_id`, or `None` if there is none (`SessionClosed` if it was deleted)."""
        session = self._sessions.get(session_id)
        if session is None and session_id in self._closed:
            raise SessionClosed(session_id)
        return session

    def create(self, session_id: str, replica: str) -> Session:
        if session_id in self._closed:
            raise SessionClosed(session_id)
        session = self._sessions[session_id] = Session(session_id, replica)
        self._written[session_id] = []
        self._append(session_id, journal.session_line(session_id, replica, session.created))
        return session

    def delete(self, session_id: str) -> Session | None:
        """Remove and close `session_id` (`None` if it was not open; `SessionClosed` if already deleted)."""
        session = self.get(session_id)
        if session is None:
            return None
        del self._sessions[session_id]
        self._written.pop(session_id, None)
        self._closed[session_id] = None
        if len(self._closed) > CLOSED_KEPT:
            self._closed.popitem(last=False)
        if self.journal_dir is not None:
            journal.append_closed(self.journal_dir, session_id)  # before the file goes: closed either way
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
            if (tokens, messages, turns) != now:
                line = journal.segment_line(index, session.forks, segment, segment.messages, (tokens, messages, turns))
                self._append(session.session_id, line)

    def _path(self, session_id: str) -> Path:
        return self.journal_dir / f"{session_id}.jsonl"

    def _append(self, session_id: str, line: dict[str, Any]) -> None:
        if self.journal_dir is not None:
            journal.append(self._path(session_id), line)

    def _adopt(self, session: Session) -> None:
        """Hold `session`, reloaded from its journal, as journaled up to now."""
        self._sessions[session.session_id] = session
        self._written[session.session_id] = [(len(s.tokens), len(s.messages), len(s.turns)) for s in session.segments]
