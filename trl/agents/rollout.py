"""`AgentRollout`: upstream `GRPOTrainer`'s `rollout_func` for any agent that speaks the OpenAI API.

`GRPOTrainer(..., rollout_func=AgentRollout(agent, client))` with TRL unchanged. For each prompt the trainer hands
over (its sampler already repeats every task `num_generations` times, so one entry is one episode), it runs
`agent(example, base_url)` in its own gateway session, with bounded concurrency and a deadline, reads the recorded
trajectory and returns upstream's contract: `prompt_ids`, `completion_ids`, `logprobs`, `env_mask` (1 on tokens the
engine sampled, 0 on everything the environment or template inserted), plus the agent's returned dict and a
`failure` reason as extra keyword arguments for the reward functions.

Policies, and why:

* **Forks** (the agent rewrote its history, so the session has several segments): the row is the **last** segment.
  The reward scores the episode's outcome, and the last segment holds the context the final actions were sampled
  in; concatenating segments would train on contexts the engine never saw. Earlier segments' sampled tokens are
  not trained on; they are counted (`agent/tokens_dropped_by_forks`).
* **Overlong** episodes are cut at `max_completion_length` (counted as `agent/clipped`), never an error.
* **Failures** never stop training: an agent that raises, runs past `timeout`, returns something other than a
  dict, or leaves no sampled tokens becomes a row with no trainable tokens (`env_mask` all 0) whose `failure`
  reason (`agent_error`, `timeout`, `bad_result`, `no_tokens`, `trajectory_error`) reaches the reward functions
  and is counted (`agent/failures/<reason>`, and `totals`). A synchronous agent that hangs cannot be killed: its
  thread is abandoned (give the agent's OpenAI client a timeout too); a coroutine agent is cancelled.

Trajectories are read as `trajectory.Trajectory` (a malformed answer is a `trajectory_error`); the row masks come
from its segments' `masking.MaskedTokens`, the same code the SFT collator uses. Metrics go to the trainer's own
metric store, so they appear in its logs and every `report_to` integration. `record_to=path` appends every episode
(prompt, agent result, failure, trajectory) to a JSONL file that `trl.agents.replay.ReplayRollout` feeds back to
the trainer without a server; both share `EpisodeRollout`, which turns episodes into rows. Not here: weight sync (add
`WeightSyncCallback`; this hook warns when the policy version stops moving), rewards, the agents themselves.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .correction import CorrectionMonitor, use_engine_logprobs
from .lookahead import BatchPlan, staleness, versions_per_batch
from .masking import RolloutRow
from .metrics import log_metrics
from .trajectory import Trajectory


logger = logging.getLogger("trl.agents.rollout")

FAILURE_REASONS = ("agent_error", "timeout", "bad_result", "no_tokens", "trajectory_error")
ROW_KEYS = ("prompt_ids", "completion_ids", "logprobs", "env_mask")


class Agent(Protocol):
    """An episode: work on `example` talking to the model at `base_url` (an OpenAI base URL); return a dict for
    the rewards (or `None`). May be a plain function or a coroutine function."""

    def __call__(self, example: dict[str, Any], base_url: str) -> dict[str, Any] | None | Awaitable: ...


class GatewayClient(Protocol):
    """What the rollout needs from `trl.agents.ServerClient`."""

    def session_url(self, sid: str) -> str: ...
    def trajectory(self, sid: str) -> dict[str, Any]: ...  # the gateway's JSON (`Trajectory.from_json` reads it)
    def close_session(self, sid: str) -> None: ...
    @property
    def weight_version(self) -> int: ...


@dataclass
class _Started:
    """A batch whose episodes run on the background loop (`done` resolves when the last one is collected)."""

    keys: list[str]  # prompt_key of each row, in order
    episodes: list[Episode]
    done: concurrent.futures.Future


@dataclass
class Episode:
    """One agent run and what became of it."""

    session_id: str
    example: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    error: str = ""
    seconds: float = 0.0
    trajectory: Trajectory | None = None  # as the gateway recorded it


def _tokenizer(trainer):
    """The trainer's tokenizer (a processor's own tokenizer for multimodal models), or `None`."""
    processing = getattr(trainer, "processing_class", None)
    return getattr(processing, "tokenizer", processing)


def _is_async(agent) -> bool:
    return inspect.iscoroutinefunction(agent) or inspect.iscoroutinefunction(type(agent).__call__)


def prompt_key(prompt: Any) -> str:
    """A dataset prompt (text or messages) as a hashable key."""
    return json.dumps(prompt, sort_keys=True, default=str)


class EpisodeRollout:
    """Upstream `rollout_func` from `Episode`s: rows, failure policy, metrics and recording, shared by the live
    `AgentRollout` and `trl.agents.replay.ReplayRollout`. Subclasses say where episodes come from (`episodes`).

    Args:
        max_completion_length: Completion tokens kept per row; by default the trainer's `args.max_completion_length`.
        progress: Show a progress bar per batch (main process only).
        record_to: Append every episode to this JSONL file (one line per episode: the prompt, the agent's result,
            the failure, the trajectory exactly as the gateway recorded it, step and rank), the input
            `ReplayRollout` reads. Each line is written with one `write`, so processes can share the file.

    After each call `last_episodes` holds this process's `Episode`s, `last_metrics` the batch's metrics and `totals`
    the counts (episodes, turns, failures/<reason>, clipped, ...) over all processes since construction.
    """

    def __init__(self, *, max_completion_length: int | None = None, progress: bool = True, record_to=None):
        self.max_completion_length = max_completion_length
        self.progress = progress
        self.record_to = None if record_to is None else os.fspath(record_to)
        self.totals: Counter[str] = Counter()
        self.last_episodes: list[Episode] = []
        self.last_metrics: dict[str, float] = {}

    def episodes(self, prompts: list[Any], *, rank: int, step: int, show: bool) -> list[Episode]:
        """One finished `Episode` (trajectory read) per prompt, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the episodes' source holds (nothing here)."""

    def batch_stats(self, episodes: list[Episode]) -> Counter:
        """Counts of this batch beyond the rows' own, merged over processes (keys ending in `_max` by maximum)."""
        return Counter()

    def __call__(self, prompts: list[Any], trainer) -> dict[str, list]:
        rank = getattr(getattr(trainer, "accelerator", None), "process_index", 0)
        step = getattr(getattr(trainer, "state", None), "global_step", 0)
        started = time.monotonic()
        episodes = self.episodes(prompts, rank=rank, step=step, show=self.progress and rank == 0)
        wall = time.monotonic() - started
        rows, stats = [], self.batch_stats(episodes)
        for prompt, episode in zip(prompts, episodes, strict=True):
            rows.append(self._row(prompt, episode, trainer, stats))
        if self.record_to is not None:
            self._record(prompts, episodes, step=step, rank=rank)
        self.last_episodes = episodes
        self._log(trainer, stats, wall)
        return self._output(rows, episodes)

    def _record(self, prompts: list[Any], episodes: list[Episode], *, step: int, rank: int) -> None:
        lines = b"".join(
            (json.dumps({
                "prompt": prompt, "session_id": e.session_id, "step": step, "rank": rank, "result": e.result,
                "failure": e.failure, "error": e.error, "seconds": e.seconds,
                "trajectory": None if e.trajectory is None else e.trajectory.to_json(),
            }, default=str, separators=(",", ":")) + "\n").encode()
            for prompt, e in zip(prompts, episodes, strict=True)
        )  # fmt: skip
        fd = os.open(self.record_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines)  # one write per batch: processes appending to one file do not interleave lines
        finally:
            os.close(fd)

    # -- rows and metrics -----------------------------------------------------------------------------------------

    def _row(self, prompt: Any, episode: Episode, trainer, stats: Counter) -> RolloutRow:
        segments = episode.trajectory.segments if episode.trajectory is not None else []
        max_len = self.max_completion_length or getattr(getattr(trainer, "args", None), "max_completion_length", None)
        row = segments[-1].tokens.split(max_len) if segments else None
        if row is not None and not any(row.env_mask) and not episode.failure:
            episode.failure, episode.error = "no_tokens", "the episode sampled no tokens"
        if row is None:
            episode.failure = episode.failure or "no_tokens"
            episode.error = episode.error or "the agent never called the model"
            row = RolloutRow(self._prompt_ids(prompt, trainer), [self._eos_id(trainer)], [0], [0.0])
        if episode.failure:
            row = row._replace(env_mask=[0] * len(row.env_mask))  # nothing trainable in a failed episode
            stats[f"failures/{episode.failure}"] += 1
        turns = [turn for segment in segments for turn in segment.turns]
        stats["episodes"] += 1
        stats["turns"] += len(turns)
        stats["forks"] += max(0, len(segments) - 1)
        stats["tokens_dropped_by_forks"] += sum(s.tokens.num_sampled for s in segments[:-1])
        stats["tokens_sampled"] += sum(row.env_mask)
        stats["tokens_inserted"] += len(row.env_mask) - sum(row.env_mask)
        stats["clipped"] += int(row.clipped > 0)
        generation = sum(turn.seconds for turn in turns)
        stats["generation_seconds"] += generation
        stats["agent_seconds"] += max(0.0, episode.seconds - generation)
        for turn in turns:
            for tool in turn.tool_calls:
                stats[f"tool_calls/{tool}"] += 1
        return row

    def _prompt_ids(self, prompt: Any, trainer) -> list[int]:
        tokenizer = _tokenizer(trainer)
        if tokenizer is None:
            return [0]
        text = prompt
        if isinstance(prompt, list):
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        return list(ids) or [self._eos_id(trainer)]

    @staticmethod
    def _eos_id(trainer) -> int:
        eos = getattr(_tokenizer(trainer), "eos_token_id", None)
        return int(eos) if eos is not None else 0

    def _output(self, rows: list[RolloutRow], episodes: list[Episode]) -> dict[str, list]:
        output: dict[str, list] = {key: [getattr(row, key) for row in rows] for key in ROW_KEYS}
        keys = sorted({k for e in episodes for k in e.result})
        clash = set(keys) & {*ROW_KEYS, "failure"}
        if clash:
            raise ValueError(f"the agent returned reserved keys {sorted(clash)}: rename them")
        for key in keys:
            output[key] = [e.result.get(key) for e in episodes]
        output["failure"] = [e.failure for e in episodes]
        return output

    def _log(self, trainer, stats: Counter, wall: float) -> None:
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            merged: Counter[str] = Counter()
            for part in gather_object([dict(stats)]):
                for key, value in part.items():
                    merged[key] = max(merged[key], value) if key.endswith("_max") else merged[key] + value
            stats = merged
        self.totals.update({k: v for k, v in stats.items() if not k.endswith(("_seconds", "_max", "_sum"))})
        episodes = max(1, stats["episodes"])
        metrics = {
            "agent/episodes": stats["episodes"],
            "agent/episodes_per_hour": 3600.0 * stats["episodes"] / max(wall, 1e-9),
            "agent/turns_per_episode": stats["turns"] / episodes,
            "agent/forks": stats["forks"],
            "agent/tokens_dropped_by_forks": stats["tokens_dropped_by_forks"],
            "agent/tokens_sampled": stats["tokens_sampled"],
            "agent/tokens_inserted": stats["tokens_inserted"],
            "agent/clipped": stats["clipped"],
            "agent/generation_seconds_per_episode": stats["generation_seconds"] / episodes,
            "agent/agent_seconds_per_episode": stats["agent_seconds"] / episodes,
            "agent/batch_seconds": wall,
        }
        for reason in FAILURE_REASONS:
            metrics[f"agent/failures/{reason}"] = stats.get(f"failures/{reason}", 0)
        metrics.update(_staleness_metrics(stats))
        metrics.update({f"agent/{k}": v for k, v in stats.items() if k.startswith("tool_calls/")})
        self.last_metrics = metrics
        log_metrics(trainer, metrics)


def _staleness_metrics(stats: Counter) -> dict[str, float]:
    """Policy versions behind the weights a batch is trained with (see `lookahead`), and the lookahead's counts."""
    metrics = {f"agent/{key}": value for key, value in stats.items() if key.startswith("async/")}
    if stats.get("staleness/rows"):
        rows, tokens = stats["staleness/rows"], max(1, stats["staleness/tokens"])
        metrics["agent/staleness/row_mean"] = stats["staleness/row_sum"] / rows
        metrics["agent/staleness/row_max"] = stats["staleness/row_max"]
        metrics["agent/staleness/token_mean"] = stats["staleness/token_sum"] / tokens
        metrics["agent/staleness/over_bound"] = stats["staleness/over_bound"]
    return metrics


class AgentRollout(EpisodeRollout):
    """Upstream `rollout_func` that runs `agent` once per prompt through a `trl vllm-serve-async` gateway.

    Args:
        agent: `agent(example, base_url) -> dict | None`, sync or async (see `Agent`).
        client: A `trl.agents.ServerClient` for the gateway.
        dataset: The dataset whose rows the agent gets. The trainer passes only prompts to a `rollout_func`; each
            prompt is looked up here to give the agent its whole row (repository, commit, tests ...). When not
            given, the rows of the trainer's own `train_dataset` and `eval_dataset` are used (indexed at the first
            call); an agent without either gets `{"prompt": prompt}`.
        max_concurrency: Episodes running at once in this process (those of batches started ahead included).
        timeout: Seconds one episode may take.
        max_staleness: k >= 1 starts the episodes of the trainer's next batches while it trains on the current one,
            so that no turn of a batch is more than k policy versions behind the weights the batch is trained with
            (the admission rule, prediction and misses: `trl.agents.lookahead`); nothing is dropped for being
            slow. 0 (default): each batch's episodes start when the trainer asks for it. With k >= 1 set
            upstream's off-policy correction (`GRPOConfig.vllm_importance_sampling_correction`, see README).
        max_completion_length, progress, record_to: see `EpisodeRollout`.
    """

    def __init__(
        self,
        agent: Agent | Callable[..., Any],
        client: GatewayClient,
        *,
        dataset=None,
        max_concurrency: int = 8,
        timeout: float = 600.0,
        max_staleness: int = 0,
        max_completion_length: int | None = None,
        progress: bool = True,
        record_to=None,
    ):
        if not isinstance(max_staleness, int) or isinstance(max_staleness, bool) or max_staleness < 0:
            raise ValueError(f"max_staleness must be an integer >= 0 (policy versions), not {max_staleness!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        super().__init__(max_completion_length=max_completion_length, progress=progress, record_to=record_to)
        self.agent = agent
        self.client = client
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_staleness = max_staleness
        self._plan: BatchPlan | None = None
        self.correction: CorrectionMonitor | None = None  # with max_staleness >= 1 and the correction on
        self.last_staleness: list[int | None] = []  # versions behind of the last batch's rows, in order
        self._ahead: collections.deque[_Started] = collections.deque()  # batches started for later calls, in order
        self._versions_per_batch = 1  # policy versions one batch moves (admission), measured as it runs
        self._steps_per_batch = 1  # optimizer steps per generation batch (how many batches remain before max_steps)
        self._version: int | None = None  # the policy version the current batch is trained with
        self._async_counts: Counter[str] = Counter()  # this batch's misses and discarded episodes
        self._trainer_state = None  # the trainer's `state` (max_steps, global_step), seen at each call
        self._training = True
        self.examples = self._index(dataset) if dataset is not None else None
        self._run_id = uuid.uuid4().hex[:8]
        self._batches = 0
        self._last_version: tuple[int, int] | None = None  # (global_step, policy version) at the previous call
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="agent-rollout-loop", daemon=True).start()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="agent")
        self._limit = asyncio.Semaphore(max_concurrency)  # shared by every batch in flight

    @staticmethod
    def _index(dataset) -> dict[str, dict[str, Any]]:
        examples: dict[str, dict[str, Any]] = {}
        for row in dataset:
            if "prompt" not in row:
                raise ValueError(f"dataset rows need a 'prompt' column; this one has {sorted(row)}")
            key = prompt_key(row["prompt"])
            if key in examples and examples[key] != dict(row):
                raise ValueError(
                    "two dataset rows have the same prompt but different fields, so a prompt cannot name its row: "
                    f"{str(row['prompt'])[:200]!r}. Make prompts unique (e.g. include the task id)."
                )
            examples[key] = dict(row)
        return examples

    def __call__(self, prompts: list[Any], trainer) -> dict[str, list]:
        if self.examples is None:  # no dataset given: the trainer's own rows, found once
            datasets = [getattr(trainer, "train_dataset", None), getattr(trainer, "eval_dataset", None)]
            datasets = [d for ds in datasets for d in (ds.values() if isinstance(ds, dict) else [ds]) if d is not None]
            if datasets:
                self.examples = {k: v for d in datasets for k, v in self._index(d).items()}
        self._training = getattr(getattr(trainer, "model", None), "training", True)  # evaluation batches: not planned
        if self.max_staleness and self._plan is None and self._training:
            self._plan = BatchPlan(trainer, prompt_key)
            self._steps_per_batch = self._versions_per_batch = versions_per_batch(trainer)
            if getattr(trainer, "args", None) is not None:
                # off-policy rows: upstream's correction, when its config asks, and what it masks or clips
                self.correction = use_engine_logprobs(trainer, row_staleness=lambda: self.last_staleness)
        self._trainer_state = getattr(trainer, "state", None)
        return super().__call__(prompts, trainer)

    def example_for(self, prompt: Any) -> dict[str, Any]:
        if self.examples is None:
            return {"prompt": prompt}
        try:
            return dict(self.examples[prompt_key(prompt)])
        except KeyError:
            raise KeyError(f"prompt not found in the dataset given to AgentRollout: {str(prompt)[:200]!r}") from None

    # -- running agents -----------------------------------------------------------------------------------------

    def episodes(self, prompts: list[Any], *, rank: int, step: int, show: bool) -> list[Episode]:
        self._version = self._check_sync(step)
        self._async_counts = Counter()
        if self._plan is None or not self._training:  # max_staleness=0, or evaluation: this batch only, now
            started = self._start([self.example_for(p) for p in prompts], rank, show)
        else:
            started = self._take_started(prompts, rank, show)
            self._admit(rank)  # the next batches run while this one finishes and while the trainer trains
            self._async_counts.update({"async/prediction_misses": 0, "async/episodes_discarded": 0})
            self._async_counts["async/batches_ahead_max"] = len(self._ahead)
            self._async_counts["async/episodes_ahead"] = sum(len(b.episodes) for b in self._ahead)
        started.done.result()
        return started.episodes

    def _start(self, rows: list[dict[str, Any]], rank: int, show: bool) -> _Started:
        batch = f"{self._run_id}-b{self._batches}-r{rank}"
        self._batches += 1
        episodes = [Episode(f"{batch}-{i}", row) for i, row in enumerate(rows)]
        done = asyncio.run_coroutine_threadsafe(self._run_all(episodes, show=show), self._loop)
        return _Started([prompt_key(row["prompt"]) for row in rows], episodes, done)

    def _take_started(self, prompts: list[Any], rank: int, show: bool) -> _Started:
        """The batch started ahead for `prompts`; on a miss (or none started), start it now and realign the plan."""
        keys = [prompt_key(p) for p in prompts]
        if self._ahead and self._ahead[0].keys == keys:
            return self._ahead.popleft()
        predicted = None if self._ahead else self._plan.next()  # the first call: nothing started yet
        if self._ahead or (predicted is not None and self._plan.keys(predicted) != keys):
            discarded = sum(len(b.episodes) for b in self._ahead)  # they finish and are closed, never trained on
            logger.warning("max_staleness: the trainer asked for another batch than predicted; running it now "
                           "(%d episode(s) started ahead are discarded)", discarded)  # fmt: skip
            self._async_counts["async/prediction_misses"] += 1
            self._async_counts["async/episodes_discarded"] += discarded
            self._ahead.clear()
            self._plan.realign(keys)
        return self._start([self.example_for(p) for p in prompts], rank, show)

    def _admit(self, rank: int) -> None:
        """Start batches ahead up to the admission rule's `max_staleness // versions per batch` (see `lookahead`),
        and none the trainer will not ask for (past `max_steps`)."""
        ahead = self.max_staleness // self._versions_per_batch
        state = self._trainer_state
        if state is not None and getattr(state, "max_steps", 0) > 0:
            remaining = -(-(state.max_steps - state.global_step) // self._steps_per_batch) - 1
            ahead = min(ahead, max(0, remaining))
        while len(self._ahead) < ahead:
            rows = self._plan.next()
            if rows is None:
                break
            self._ahead.append(self._start([self.example_for(row["prompt"]) for row in rows], rank, show=False))

    def batch_stats(self, episodes: list[Episode]) -> Counter:
        stats = Counter(self._async_counts)
        self.last_staleness = [None] * len(episodes)
        if self._version is None:
            return stats
        for i, episode in enumerate(episodes):
            found = staleness(episode.trajectory, self._version)
            if found is None:
                continue
            self.last_staleness[i] = found[0]
            behind, tokens, token_sum = found
            stats["staleness/rows"] += 1
            stats["staleness/row_sum"] += behind
            stats["staleness/row_max"] = max(stats["staleness/row_max"], behind)
            stats["staleness/tokens"] += tokens
            stats["staleness/token_sum"] += token_sum
            stats["staleness/over_bound"] += int(behind > self.max_staleness)
        if stats["staleness/over_bound"]:
            logger.warning("%d episode(s) have turns more than max_staleness=%d policy versions behind (more "
                           "syncs per batch than expected?)", stats["staleness/over_bound"], self.max_staleness)  # fmt: skip
        return stats

    async def _run_all(self, episodes: list[Episode], show: bool) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=len(episodes), desc="agent episodes", unit="ep", disable=not show, leave=False) as bar:

            async def run(episode: Episode) -> None:
                async with self._limit:
                    await self._run_one(episode)
                bar.update(1)
                if episode.failure:
                    bar.set_postfix(failures=sum(1 for e in episodes if e.failure), refresh=False)

            await asyncio.gather(*(run(e) for e in episodes))

    async def _run_one(self, episode: Episode) -> None:
        url = self.client.session_url(episode.session_id)
        started = time.monotonic()
        try:
            if _is_async(self.agent):
                result = await asyncio.wait_for(self.agent(dict(episode.example), url), self.timeout)
            else:
                call = self._loop.run_in_executor(self._pool, self.agent, dict(episode.example), url)
                result = await asyncio.wait_for(call, self.timeout)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, max(0.1, self.timeout - (time.monotonic() - started)))
        except asyncio.TimeoutError:
            episode.failure, episode.error = "timeout", f"episode ran past its {self.timeout:.0f} s timeout"
        except Exception as exc:  # an agent's bug must not stop training: recorded, counted, logged
            episode.failure, episode.error = "agent_error", f"{type(exc).__name__}: {exc}"
        else:
            if result is not None and not isinstance(result, dict):
                episode.failure, episode.error = "bad_result", f"agent returned {type(result).__name__}, not a dict"
            else:
                episode.result = result or {}
        episode.seconds = time.monotonic() - started
        await asyncio.to_thread(self._collect, episode)  # while other episodes still run
        if episode.failure:
            logger.warning("episode %s failed (%s): %s", episode.session_id, episode.failure, episode.error)

    def _collect(self, episode: Episode) -> None:
        """Read the episode's trajectory and free its session on the gateway."""
        from .client import ServerError

        try:
            answer = self.client.trajectory(episode.session_id)
        except ServerError as exc:
            if exc.status != 404 and not episode.failure:  # 404: the agent never called the model
                episode.failure, episode.error = "trajectory_error", str(exc)
            return
        self.client.close_session(episode.session_id)
        try:
            episode.trajectory = Trajectory.from_json(answer)
        except ValueError as exc:
            if not episode.failure:
                episode.failure, episode.error = "trajectory_error", f"the gateway answered no trajectory: {exc}"

    # -- observability -----------------------------------------------------------------------------------------

    def _check_sync(self, step: int) -> int | None:
        """The policy version the replicas serve now (`None` if unreadable); warns when syncs stopped. Measures
        the versions one batch moves, for the admission rule."""
        try:
            version = self.client.weight_version
        except Exception as exc:  # the gateway's error text is in the message; rollouts will fail loudly below
            logger.warning("could not read the policy version: %s", exc)
            return None
        if self._last_version is not None:
            last_step, last_version = self._last_version
            self._versions_per_batch = max(self._versions_per_batch, version - last_version)
            if step > last_step and version == last_version:
                logger.warning(
                    "the trainer took %d optimizer step(s) since the last rollout but the server still serves policy "
                    "version %d: episodes are sampled from stale weights. Add "
                    "`trl.agents.WeightSyncCallback(client)` to the trainer's callbacks.",
                    step - last_step,
                    version,
                )
        self._last_version = (step, version)
        return version

    def close(self) -> None:
        """Stop the background event loop and threads (episodes still running are abandoned; those of batches
        started ahead are cancelled, counted in `totals["async/episodes_unused"]`, and their sessions closed)."""
        for batch in self._ahead:
            batch.done.cancel()
            self.totals["async/episodes_unused"] += len(batch.episodes)
            for episode in batch.episodes:
                try:
                    self.client.close_session(episode.session_id)
                except Exception as exc:  # the gateway may already be gone; the count above still says it
                    logger.warning("could not close session %s: %s", episode.session_id, exc)
        self._ahead.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._pool.shutdown(wait=False, cancel_futures=True)
