"""The recorded trajectory as it travels on the wire: typed, validated, and written back exactly as it was read.

`GET /sessions/{sid}/trajectory` answers a `Trajectory`: the session's id and replica, how many times the agent
rewrote its history (`forks`), and its segments (`SegmentRecord`), each one token-exact history (`token_ids`, `mask`
1 on sampled tokens, the engine's `logprobs`, `prompt_length`) with the turns generated in it (`TurnRecord`: policy
version, finish reason, token counts, tools called, engine seconds). The gateway answers and journals these types,
and the rollout hook, replay and the SFT collator read them, so the format is written down here and nowhere else.

`to_json()` gives the gateway's JSON (same keys, order and values), and
`Trajectory.from_json(answer).to_json() == answer` for every answer the gateway gives. `from_json` fills what
hand-written or older files leave out (`logprobs`, `prompt_length`, `turns`, the session fields, a turn's
`tool_calls` and `seconds`), ignores keys it does not know, and raises `ValueError` naming the first bad field
(e.g. `trajectory.segments[1].mask has 5 entries but token_ids has 6`). `to_json()` shares this object's lists.

Not here: which tokens are sampled (`masking.MaskedTokens`, which holds a segment's tokens), recording and
journaling (`server/sessions.py`, `journal.py`), rows for training (`rollout.py`, `collator.py`). This module imports
nothing from `trl.agents.server`: the gateway and the trainer's side both import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .masking import MaskedTokens


_REQUIRED = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _object(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, not {type(data).__name__}")
    return data


def _field(data: dict, key: str, where: str, ok: Callable[[Any], bool], expected: str, default: Any = _REQUIRED):
    """`data[key]` checked with `ok`; `default` when the key is absent (an error if there is none)."""
    if key not in data:
        if default is _REQUIRED:
            raise ValueError(f"{where}.{key} is missing")
        return default
    value = data[key]
    if not ok(value):
        raise ValueError(f"{where}.{key} must be {expected}, not {_short(value)}")
    return value


def _items(data: dict, key: str, where: str, ok: Callable[[Any], bool], expected: str, default: Any = _REQUIRED):
    """`data[key]`, a list whose every item passes `ok`, copied; `default` when the key is absent."""
    if key not in data and default is not _REQUIRED:
        return default
    values = _field(data, key, where, lambda v: isinstance(v, list), "a list")
    if not all(map(ok, values)):
        index = next(i for i, value in enumerate(values) if not ok(value))
        raise ValueError(f"{where}.{key}[{index}] must be {expected}, not {_short(values[index])}")
    return list(values)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class TurnRecord:
    """One generation inside a segment."""

    policy_version: int
    finish_reason: str | None
    prompt_tokens: int  # tokens of the segment before this turn's sampled ones
    completion_tokens: int
    tool_calls: list[str] = field(default_factory=list)  # names of the tools the turn called, in order
    seconds: float = 0.0  # engine time of the turn (generation only, not rendering or parsing)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tool_calls": self.tool_calls,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "turn") -> TurnRecord:
        data = _object(data, where)
        return cls(
            policy_version=_field(data, "policy_version", where, _is_count, "a non-negative integer"),
            finish_reason=_field(data, "finish_reason", where, _is_str_or_none, "a string or null"),
            prompt_tokens=_field(data, "prompt_tokens", where, _is_count, "a non-negative integer"),
            completion_tokens=_field(data, "completion_tokens", where, _is_count, "a non-negative integer"),
            tool_calls=_items(data, "tool_calls", where, lambda v: isinstance(v, str), "a tool name", []),
            seconds=_field(data, "seconds", where, _is_number, "a number", 0.0),
        )


@dataclass
class SegmentRecord:
    """One token-exact history (its tokens, masks and logprobs in a `MaskedTokens`) and the turns generated in it."""

    tokens: MaskedTokens = field(default_factory=MaskedTokens)
    turns: list[TurnRecord] = field(default_factory=list)

    @property
    def prompt_length(self) -> int:
        return self.tokens.prompt_length

    def to_json(self) -> dict[str, Any]:
        return {
            "token_ids": self.tokens.token_ids,
            "mask": self.tokens.mask,
            "logprobs": self.tokens.logprobs,
            "prompt_length": self.tokens.prompt_length,
            "turns": [turn.to_json() for turn in self.turns],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "segment") -> SegmentRecord:
        """Only `token_ids` and `mask` are required; `logprobs` may be absent or null (no logprob known)."""
        data = _object(data, where)
        token_ids = _items(data, "token_ids", where, _is_count, "a token id (a non-negative integer)")
        mask = _items(data, "mask", where, lambda v: _is_int(v) and v in (0, 1), "0 or 1")
        logprobs = [None] * len(token_ids)
        if data.get("logprobs") is not None:
            logprobs = _items(data, "logprobs", where, lambda v: v is None or _is_number(v), "a number or null")
        for name, values in (("mask", mask), ("logprobs", logprobs)):
            if len(values) != len(token_ids):
                raise ValueError(f"{where}.{name} has {len(values)} entries but token_ids has {len(token_ids)}")
        tokens = MaskedTokens(token_ids, mask, logprobs)
        prompt_length = _field(data, "prompt_length", where, _is_count, "a non-negative integer", None)
        if prompt_length is not None and prompt_length != tokens.prompt_length:
            raise ValueError(
                f"{where}.prompt_length is {prompt_length} but the mask's first sampled token is at "
                f"{tokens.prompt_length}"
            )
        turns = _items(data, "turns", where, lambda v: True, "a turn", [])
        return cls(tokens, [TurnRecord.from_json(turn, f"{where}.turns[{i}]") for i, turn in enumerate(turns)])


@dataclass
class Trajectory:
    """What the gateway recorded for one session: its segments in order, the last one the live history."""

    session_id: str | None = None
    replica: str | None = None
    forks: int = 0  # segments started because the agent rewrote its history (all but the first)
    segments: list[SegmentRecord] = field(default_factory=list)

    @property
    def turns(self) -> list[TurnRecord]:
        """Every turn of every segment, in recorded order."""
        return [turn for segment in self.segments for turn in segment.turns]

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "replica": self.replica,
            "forks": self.forks,
            "segments": [segment.to_json() for segment in self.segments],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "trajectory") -> Trajectory:
        """Only `segments` is required; `forks` defaults to one per segment after the first."""
        data = _object(data, where)
        segments = _items(data, "segments", where, lambda v: True, "a segment")
        return cls(
            session_id=_field(data, "session_id", where, _is_str_or_none, "a string or null", None),
            replica=_field(data, "replica", where, _is_str_or_none, "a string or null", None),
            forks=_field(data, "forks", where, _is_count, "a non-negative integer", max(0, len(segments) - 1)),
            segments=[SegmentRecord.from_json(s, f"{where}.segments[{i}]") for i, s in enumerate(segments)],
        )
