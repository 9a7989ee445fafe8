"""Repository-repair tasks in SWE-Gym / SWE-bench form, and the workspaces episodes run in.

A task row has `instance_id`, `repo`, `base_commit`, `problem_statement`, `patch` (the oracle fix), and optionally
`test_patch`, `FAIL_TO_PASS`, `PASS_TO_PASS` (lists, or JSON strings of lists as on the Hub) and `test_command`.
`repo` is a GitHub `owner/name`, a git URL, or a local path (the offline toy suite, `toy_suite.py`).

* `load_tasks(source)`: a Hub dataset name, a `.jsonl`/`.json` file or a folder holding `tasks.jsonl`, as a
  `datasets.Dataset`, checked for the required columns, with a unique `prompt` column added (GRPOTrainer needs one;
  `AgentRollout` finds the row again by it).
* `task_dataset(source, split, cache_dir)`: what the training scripts train on: `source="toy"` builds the offline
  toy suite into the cache on first use; rows are kept by their `split` column where there is one.
* `TaskArguments`: the task arguments `grpo.py` and `sft.py` share (a dataclass for `TrlParser`).
* `Workspaces`: each (repository, commit) is fetched once, as a single-commit shallow fetch, into a local cache;
  each episode then gets its own cheap copy (`cp --reflink=auto`), removed by whoever asked for it. It also carries
  the extra environment of the commands run there (`command_env(source)`).

Not here: the agent, the rewards, how the toy suite is built (`toy_suite.py`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from code_repair.gitcmd import git


logger = logging.getLogger("code_repair.data")

REQUIRED = ("instance_id", "repo", "base_commit", "problem_statement", "patch")


def load_tasks(source: str | Path, split: str = "train"):
    """Tasks from a Hub dataset name, a JSON(L) file or a folder with `tasks.jsonl`, as a `datasets.Dataset`."""
    from datasets import Dataset, load_dataset

    path = Path(source)
    if path.is_dir():
        path = path / "tasks.jsonl"
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"no task file at {path}")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        dataset = Dataset.from_list(rows)
    else:
        dataset = load_dataset(str(source), split=split)
    missing = [c for c in REQUIRED if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source}: task rows need the columns {list(REQUIRED)}; missing {missing}")
    return dataset.map(lambda row: {"prompt": task_prompt(row)})


def task_dataset(source: str, split: str, cache_dir: str | Path, tasks: list[str] | None = None):
    """The task rows to train or evaluate on; `"toy"` builds the offline toy suite under `cache_dir` on first use.
    `tasks`: keep only these instance ids (ValueError naming any that `split` lacks)."""
    if source == "toy":
        from code_repair import toy_suite

        folder = Path(cache_dir) / "toy-suite"
        if not (folder / "tasks.jsonl").exists():
            toy_suite.build(folder)
        source = str(folder)
    dataset = load_tasks(source, split=split)
    if "split" in dataset.column_names:
        dataset = dataset.filter(lambda row: row["split"] == split)
    if tasks:
        wanted = set(tasks)
        unknown = sorted(wanted - set(dataset["instance_id"]))
        if unknown:
            raise ValueError(f"tasks not in {source} split {split!r}: {', '.join(unknown)}")
        dataset = dataset.filter(lambda row: row["instance_id"] in wanted)
    if len(dataset) == 0:
        raise ValueError(f"no tasks in {source} with split {split!r}")
    return dataset


def command_env(source: str) -> dict[str, str]:
    """Extra environment variables for the commands of `source`'s tasks (`toy`: `toy_suite.COMMAND_ENV`)."""
    if source == "toy":
        from code_repair import toy_suite

        return dict(toy_suite.COMMAND_ENV)
    return {}


@dataclass
class TaskArguments:
    """Which tasks a training script uses (the arguments of `task_dataset`; a `TrlParser` dataclass)."""

    dataset: str = field(
        default="toy", metadata={"help": "'toy', a Hub dataset in SWE-Gym form, or a tasks .jsonl / folder"}
    )
    split: str = field(default="train", metadata={"help": "Hub split, or value of a `split` column to keep"})
    cache_dir: str = field(
        default=os.path.expanduser("~/.cache/trl-agents/code_repair"), metadata={"help": "repositories cache"}
    )
    tasks: list[str] | None = field(default=None, metadata={"help": "instance ids: only these tasks of the split"})

    def load(self):
        """The task rows (`task_dataset`)."""
        return task_dataset(self.dataset, self.split, self.cache_dir, self.tasks)

    def workspaces(self) -> Workspaces:
        return Workspaces(self.cache_dir, env=command_env(self.dataset))


def task_prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """The row as the chat prompt GRPOTrainer carries around (unique per task: it names the instance)."""
    return [{"role": "user", "content": f"[{row['instance_id']}]\n{row['problem_statement']}"}]


def test_ids(value) -> list[str]:
    """`FAIL_TO_PASS` / `PASS_TO_PASS` as a list (the Hub stores them as JSON strings)."""
    if value is None:
        return []
    return json.loads(value) if isinstance(value, str) else list(value)


def repo_url(repo: str) -> str:
    """Where to fetch `repo` from: a URL as is, a local folder as `file://`, `owner/name` from GitHub."""
    if "://" in repo or repo.startswith("git@"):
        return repo
    if os.path.isdir(repo):
        return Path(repo).resolve().as_uri()
    if re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        return f"https://github.com/{repo}.git"
    raise ValueError(f"repo {repo!r} is neither a URL, a local folder nor a GitHub owner/name")


class Workspaces:
    """A cache of repositories at task commits, and per-episode copies of them.

    Args:
        cache_dir: Where fetched (repository, commit) checkouts are kept (shared by processes: a file lock per
            checkout makes concurrent fetches safe).
        work_dir: Where episode copies go (default: the system temp folder).
        fetch_timeout: Seconds one fetch may take.
        env: Extra environment variables of the commands run in these workspaces (the agent's tools and the
            tests-pass check pass them to `sandbox.Sandbox`); `command_env(source)` gives a dataset's.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        work_dir: str | Path | None = None,
        fetch_timeout: float = 600,
        env: dict[str, str] | None = None,
    ):
        self.env = dict(env or {})
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(work_dir or tempfile.gettempdir())
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.fetch_timeout = fetch_timeout

    def source(self, repo: str, commit: str) -> Path:
        """The cached checkout of `repo` at `commit`, fetched (one commit, depth 1) the first time."""
        if not re.fullmatch(r"[0-9a-f]{7,64}", commit):
            raise ValueError(f"base_commit {commit!r} is not a commit hash")
        slug = re.sub(r"[^\w.-]+", "_", repo.removesuffix(".git")).strip("_")[-100:]
        target = self.cache_dir / slug / commit
        if (target / ".git").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f"{commit}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same checkout
            if not (target / ".git").exists():
                self._fetch(repo_url(repo), commit, target)
        return target

    def _fetch(self, url: str, commit: str, target: Path) -> None:
        start = time.monotonic()
        remote = not url.startswith("file:")
        if remote:  # local fetches take milliseconds: not worth a line each
            print(f"fetching {url} at {commit[:12]} into {target.parent} ...", file=sys.stderr, flush=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=target.parent))
        try:
            git("init", "-q", cwd=staging)
            git("fetch", "-q", "--depth", "1", url, commit, cwd=staging, timeout=self.fetch_timeout)
            git("-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD", cwd=staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if remote:
            print(f"fetched {commit[:12]} in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)

    def checkout(self, row: dict[str, Any]) -> Path:
        """A fresh copy of the row's repository at its `base_commit`, for one episode (the caller removes it)."""
        source = self.source(row["repo"], row["base_commit"])
        name = re.sub(r"[^\w.-]+", "_", str(row.get("instance_id", "task")))[:80]
        workspace = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work_dir))
        result = subprocess.run(
            ["cp", "-a", "--reflink=auto", f"{source}/.", str(workspace)], capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            shutil.rmtree(workspace, ignore_errors=True)
            raise RuntimeError(f"copying {source} failed: {result.stderr.strip()}")
        return workspace
