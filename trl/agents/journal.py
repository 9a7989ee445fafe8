"""The session journal's file format: one append-only JSONL file per session, written by the gateway, read back by
the gateway when it restarts and by `ReplayRollout` (a `--journal-dir` as recorded episodes).

The first line is the session (`session_id`, `replica`, `created`); then one line per recorded turn with what the
turn appended to one segment: `segment` (its index), `forks`, `token_ids`, `mask`, `logprobs`, `messages` (the
canonical messages the gateway compares requests against, not on the wire) and `turns` (the fields of
`trajectory.py`). Every line is written with one `write`, so a crash leaves at most the last line torn: `read` skips
a torn last line (`JournalFile.torn`, logged) and raises `JournalError` naming the file and line for a damaged line
anywhere else.

Beside the session files, `closed.txt` lists the ids of deleted sessions, one per line (`append_closed`,
`read_closed`), so a closed session stays closed across restarts.

Not here: which sessions exist and what each turn records (`server/sessions.py`), the trajectory's fields
(`trajectory.py`). Imports nothing from `trl.agents.server`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masking import MaskedTokens
from .trajectory import SegmentRecord, Trajectory, TurnRecord


logger = logging.getLogger("trl.agents.journal")
CLOSED = "closed.txt"  # ids of deleted sessions, beside the session files


class JournalError(RuntimeError):
    """A session journal that cannot be read back."""


@dataclass
class JournalFile:
    """One session as its journal recorded it: the trajectory, and each segment's canonical messages."""

    trajectory: Trajectory
    created: float
    messages: list[list[str]] = field(default_factory=list)  # per segment
    torn: bool = False  # the last line was cut short by a crash and skipped


def session_line(session_id: str, replica: str, created: float) -> dict[str, Any]:
    """The first line of a session's journal."""
    return {"session_id": session_id, "replica": replica, "created": created}


def segment_line(
    index: int, forks: int, segment: SegmentRecord, messages: list[str], since: tuple[int, int, int]
) -> dict[str, Any]:
    """The line for what segment `index` recorded after `since` (its tokens, messages and turns then)."""
    tokens, seen, turns = since
    t = segment.tokens
    return {
        "segment": index, "forks": forks,
        "token_ids": t.token_ids[tokens:], "mask": t.mask[tokens:], "logprobs": t.logprobs[tokens:],
        "messages": messages[seen:], "turns": [turn.to_json() for turn in segment.turns[turns:]],
    }  # fmt: skip


def append(path: str | os.PathLike, line: dict[str, Any]) -> None:
    """Append `line` to the journal at `path` (created, owner-only, if missing) with one `write`."""
    _write_line(path, json.dumps(line, separators=(",", ":")))


def append_closed(folder: str | os.PathLike, session_id: str) -> None:
    """Record in `folder` that session `session_id` was deleted."""
    _write_line(Path(folder) / CLOSED, session_id)


def read_closed(folder: str | os.PathLike, keep: int) -> list[str]:
    """The last `keep` session ids recorded as deleted in `folder`, oldest first (the file is cut to them)."""
    path = Path(folder) / CLOSED
    if not path.exists():
        return []
    ids = [sid for sid in path.read_text().split("\n") if sid]
    if len(ids) > keep:
        ids = ids[-keep:]
        path.write_text("".join(sid + "\n" for sid in ids))
    return ids


def _write_line(path: str | os.PathLike, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())  # one write per line: a crash leaves at most the last line torn
    finally:
        os.close(fd)


def read(path: str | os.PathLike) -> JournalFile:
    """The session journaled at `path` (see the module docstring for torn and damaged lines)."""
    path = Path(path)
    lines, torn = _lines(path)
    if not lines or not isinstance(lines[0], dict) or "session_id" not in lines[0]:
        raise JournalError(f"session journal {path} does not start with a session record")
    head = lines[0]
    if not isinstance(head.get("replica"), str) or not isinstance(head.get("created"), int | float):
        raise JournalError(f"session journal {path}, line 1, is damaged: no replica or creation time")
    parts: list[tuple[list[int], list[int], list[float | None], list[TurnRecord], list[str]]] = []
    forks = 0
    for number, line in enumerate(lines[1:], 2):
        try:
            index, forks, delta, messages = _segment_delta(line)
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"session journal {path}, line {number}, is damaged: {exc}") from exc
        while len(parts) <= index:
            parts.append(([], [], [], [], []))
        ids, mask, logprobs, turns, seen = parts[index]
        ids += delta.tokens.token_ids
        mask += delta.tokens.mask
        logprobs += delta.tokens.logprobs
        turns += delta.turns
        seen += messages
    segments = [SegmentRecord(MaskedTokens(ids, mask, logprobs), turns) for ids, mask, logprobs, turns, _ in parts]
    trajectory = Trajectory(head["session_id"], head["replica"], forks, segments)
    return JournalFile(trajectory, head["created"], [part[-1] for part in parts], torn)


def read_folder(folder: str | os.PathLike) -> list[JournalFile]:
    """Every session journaled in `folder` (its `*.jsonl` files), in file-name order."""
    return [read(path) for path in sorted(Path(folder).glob("*.jsonl"))]


def _lines(path: Path) -> tuple[list[Any], bool]:
    """The JSON lines of `path`, and whether a torn last line was skipped."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # torn by a crash mid-write: everything before it is intact
                logger.warning("session journal %s: last line is incomplete; skipped", path)
                return parsed, True
            raise JournalError(f"session journal {path}, line {number}, is damaged: {exc}") from exc
    return parsed, False


def _segment_delta(line: dict[str, Any]) -> tuple[int, int, SegmentRecord, list[str]]:
    """A turn's line: the segment's index, the session's forks, what the segment gained, its new messages."""
    index, forks, messages = line["segment"], line["forks"], line["messages"]
    if not isinstance(index, int) or index < 0 or not isinstance(forks, int) or forks < 0:
        raise ValueError(f"segment and forks must be non-negative integers, not {index!r} and {forks!r}")
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        raise ValueError("messages must be a list of strings")
    return index, forks, SegmentRecord.from_json(line, "record"), list(messages)
