"""`ReplayRollout`: upstream `GRPOTrainer`'s `rollout_func` fed from recorded episodes instead of a live server.

`GRPOTrainer(..., rollout_func=ReplayRollout("episodes.jsonl"))` trains on trajectories recorded earlier, with no
`trl vllm-serve-async`, no agent and no vLLM: to debug the training side on a fixed batch, to rerun a step that
went wrong, to measure the trainer alone (the GPU benchmarks), or to train offline. Rows, failure policy and metrics
are `AgentRollout`'s own (`EpisodeRollout`), so a replayed batch is the batch the live run built.

Sources it reads:

* a JSONL file written by `AgentRollout(record_to=...)`: one episode per line with its prompt, the agent's result
  (reaching the reward functions as before), its failure and the gateway's trajectory;
* a JSONL file of bare trajectories, one `GET /sessions/{sid}/trajectory` answer per line;
* a folder of gateway session journals (`trl vllm-serve-async --journal-dir`): sessions still open there, read
  with `journal.py` (no gateway code is imported).

Every trajectory is read as a `trajectory.Trajectory`: a malformed one is an error naming the line and the field.

Which episode answers which prompt (`match`): `"prompt"` (the default) gives each prompt its own recorded episodes,
in recorded order, cycling when the trainer asks for more than were recorded; `"order"` hands out episodes in file
order whatever the prompt (the only choice for sources without prompts). With several processes every rank sees the
whole batch's prompts (one small gather), so no episode is handed to two ranks in one batch.

Not here: how episodes become rows (`rollout.EpisodeRollout`), recording (`AgentRollout(record_to=...)`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from . import journal
from .rollout import Episode, EpisodeRollout, prompt_key
from .trajectory import Trajectory


MATCHES = ("prompt", "order")


def load_records(source: str | os.PathLike | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Episode records from `source` (see the module docstring), each with at least a `trajectory` (a `Trajectory`,
    or `None` for an episode that recorded none)."""
    if isinstance(source, list):
        lines = [(f"item {i}", record) for i, record in enumerate(source)]
    else:
        path = Path(source)
        if path.is_dir():
            return _journal_records(path)
        if not path.is_file():
            raise FileNotFoundError(f"no recorded episodes at {path}: give a JSONL file or a journal folder")
        lines = []
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                lines.append((f"{path}, line {number}", json.loads(text)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}, is not JSON: {exc}") from None
    records = [_record(where, line) for where, line in lines]
    if not records:
        raise ValueError(f"no recorded episodes in {source}")
    return records


def _record(where: str, line: Any) -> dict[str, Any]:
    """An episode record (a copy, its trajectory typed) from a record or a bare trajectory."""
    if not isinstance(line, dict):
        raise ValueError(f"{where}: neither an episode record nor a trajectory (not a JSON object)")
    record = dict(line) if "trajectory" in line else {"trajectory": line}  # a bare trajectory
    if record["trajectory"] is not None and not isinstance(record["trajectory"], Trajectory):
        try:
            record["trajectory"] = Trajectory.from_json(record["trajectory"])
        except ValueError as exc:
            bare = "" if "trajectory" in line else "neither an episode record nor a trajectory: "
            raise ValueError(f"{where}: {bare}{exc}") from None
    return record


def _journal_records(folder: Path) -> list[dict[str, Any]]:
    recorded = journal.read_folder(folder)
    records = [{"session_id": r.trajectory.session_id, "trajectory": r.trajectory} for r in recorded]
    if not records:
        raise ValueError(f"no session journals (*.jsonl) in {folder}")
    return sorted(records, key=lambda r: r["session_id"])


class ReplayRollout(EpisodeRollout):
    """Upstream `rollout_func` that answers each prompt with a recorded episode.

    Args:
        source: A JSONL file of episode records or trajectories, a journal folder, or a list of records.
        match: `"prompt"` or `"order"` (see the module docstring).
        max_completion_length, progress, record_to: see `EpisodeRollout`.
    """

    def __init__(
        self,
        source: str | os.PathLike | list[dict[str, Any]],
        *,
        match: str = "prompt",
        max_completion_length: int | None = None,
        progress: bool = False,
        record_to=None,
    ):
        if match not in MATCHES:
            raise ValueError(f"match must be one of {MATCHES}, not {match!r}")
        super().__init__(max_completion_length=max_completion_length, progress=progress, record_to=record_to)
        self.records = load_records(source)
        self.match = match
        self.by_prompt: dict[str, list[dict[str, Any]]] = {}
        if match == "prompt":
            unnamed = sum(1 for r in self.records if "prompt" not in r)
            if unnamed:
                raise ValueError(
                    f"{unnamed} of {len(self.records)} recorded episodes have no prompt, so they cannot be matched "
                    "to the trainer's prompts: record with AgentRollout(record_to=...) or use match='order'"
                )
            for record in self.records:
                self.by_prompt.setdefault(prompt_key(record["prompt"]), []).append(record)
        self.handed_out: Counter[str] = Counter()  # per prompt key ("" for match="order"), over all ranks

    def episodes(self, prompts: list[Any], *, rank: int, step: int, show: bool) -> list[Episode]:
        keys = [prompt_key(p) if self.match == "prompt" else "" for p in prompts]
        batch = self._whole_batch(keys)
        before = sum(len(part) for part in batch[:rank])
        seen: Counter[str] = Counter()
        picks = []
        for position, key in enumerate(k for part in batch for k in part):
            index = self.handed_out[key] + seen[key]
            seen[key] += 1
            if before <= position < before + len(keys):
                picks.append(self._pick(key, index, prompts[position - before]))
        self.handed_out.update(seen)
        return [
            Episode(
                session_id=str(record.get("session_id") or f"replay-{index}"),
                example={"prompt": prompt},
                result=dict(record.get("result") or {}),
                failure=record.get("failure"),
                error=str(record.get("error") or ""),
                seconds=float(record.get("seconds") or 0.0),
                trajectory=record.get("trajectory"),
            )
            for prompt, (index, record) in zip(prompts, picks, strict=True)
        ]

    def _pick(self, key: str, index: int, prompt: Any) -> tuple[int, dict[str, Any]]:
        pool = self.by_prompt.get(key) if self.match == "prompt" else self.records
        if not pool:
            raise KeyError(f"no recorded episode for the prompt {str(prompt)[:200]!r}")
        return index, pool[index % len(pool)]

    @staticmethod
    def _whole_batch(keys: list[str]) -> list[list[str]]:
        """Every rank's prompt keys, in rank order (one gather when training runs in several processes)."""
        from accelerate.state import PartialState
        from accelerate.utils import gather_object

        if PartialState().num_processes == 1:
            return [keys]

        return gather_object([keys])
