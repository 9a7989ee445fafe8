"""Diff-based rewards for GRPO training of a coding agent on SWE-bench-style rows.

Each reward compares the agent's final workspace diff (`generated_diff`, `git diff` format; None when the episode
failed) with the row's oracle `patch`, statically:

* `diff_similarity_reward`: per-file `difflib` similarity of the two diffs, in [0, 1] (the CodeRepairRL reward).
* `exact_patch_reward`: 1.0 when both diffs make the same line changes to the same files, else 0.0.
* `non_empty_patch_reward`: 1.0 when the agent changed at least one line (a small shaping term).
* `TestsPassReward`: 1.0 when the task's tests pass with the diff applied (runs them in a sandbox; slow).

The first three are cheap proxies, not correctness checks: nothing is applied or executed, so a fix that differs from the oracle
(another file, another approach) scores low even if it passes the tests, and a near-copy of the oracle scores high
even if it breaks them. A None diff (failed episode) scores 0.0.

Usage (TRL passes dataset columns and the agent's extra keys as keyword arguments):

    trainer = GRPOTrainer(..., reward_funcs=[diff_similarity_reward, non_empty_patch_reward])
"""

import difflib
import itertools
import re
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor

from code_repair.data import test_ids
from code_repair.sandbox import Limits, Sandbox


_HEADER = re.compile(r'^diff --git "?a/(.+?)"? "?b/(.+?)"?$')
_INDEX = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+( [0-7]+)?$")


def _path(text: str, prefix: str) -> str | None:
    """The path of a `--- a/X` / `+++ b/X` line (after its marker), without prefix; None for /dev/null."""
    path = text.split("\t")[0].rstrip("\r").strip('"')  # git ends names with spaces with a tab; diff adds dates
    return None if path == "/dev/null" else path.removeprefix(prefix)


def _chunk_path(chunk: list[str]) -> str:
    """The file a chunk changes: its `+++ b/` path, its `--- a/` path for deletions, else the `diff --git` b/ path."""
    old = new = None
    for line in chunk:
        if line.startswith("@@"):  # hunk lines follow: `--- x` there is a removed line `-- x`
            break
        if line.startswith("--- "):
            old = _path(line[4:], "a/")
        elif line.startswith("+++ "):
            new = _path(line[4:], "b/")
    if new or old:
        return new or old
    header = _HEADER.match(chunk[0])  # no content change (rename, mode, binary): only the header names the file
    return header.group(2) if header else chunk[0]


def split_diff_by_file(diff: str) -> dict[str, str]:
    r"""Split a unified diff into per-file chunks, keyed by path; text before the first file is ignored.

    Chunks start at `diff --git` lines; diffs without them (plain `diff -u`) start one at each `---`/`+++`/`@@`.

    >>> deletion = "diff --git a/my doc.md b/my doc.md\n--- a/my doc.md\t\n+++ /dev/null\n@@ -1 +0,0 @@\n-hi\n"
    >>> split_diff_by_file("Some preamble.\n" + deletion) == {"my doc.md": deletion}
    True
    """
    lines = diff.rstrip("\n").split("\n")  # not splitlines(): source lines may hold form feeds
    git = any(line.startswith("diff --git ") for line in lines)
    plain_start = ["--- ", "+++ ", "@@ -"]
    starts = [
        i
        for i, line in enumerate(lines)
        if (line.startswith("diff --git ") if git else [x[:4] for x in lines[i : i + 3]] == plain_start)
    ]
    chunks: dict[str, str] = {}
    for start, end in itertools.pairwise([*starts, len(lines)]):
        path = _chunk_path(lines[start:end])
        chunks[path] = chunks.get(path, "") + "\n".join(lines[start:end]) + "\n"
    return chunks


def _normalise(chunk: str) -> str:
    """A file chunk without `index <sha>..<sha>` lines and trailing whitespace, which differ between equal edits."""
    return "\n".join(line.rstrip() for line in chunk.split("\n") if not _INDEX.match(line)).rstrip()


def _changed_lines(chunk: str) -> list[str]:
    """The `+`/`-` lines of a file chunk's hunks, in order: no headers, hunk line numbers or context lines."""
    lines = _normalise(chunk).split("\n")
    first_hunk = next((i for i, line in enumerate(lines) if line.startswith("@@")), len(lines))
    return [line for line in lines[first_hunk:] if line.startswith(("+", "-"))]


def unified_diff_similarity(generated: str, oracle: str) -> float:
    """Per-file similarity of two unified diffs, in [0, 1] (CodeRepairRL's unified-diff reward).

    Each oracle file scores the `difflib.SequenceMatcher` ratio of its chunk with the generated one, or 0 when the
    agent left it alone (chunks are compared without `index <sha>..<sha>` lines and trailing whitespace); the sum is divided by the number of files of the larger diff, so files the agent
    touched but the oracle did not lower the score. An empty generated diff scores 0.0 (1.0 if the oracle is empty).
    """
    if not oracle.strip():
        return float(not generated.strip())
    if not generated.strip():
        return 0.0
    oracle_files, generated_files = split_diff_by_file(oracle), split_diff_by_file(generated)
    total = sum(
        difflib.SequenceMatcher(None, _normalise(chunk), _normalise(generated_files[path]), autojunk=False).ratio()
        for path, chunk in oracle_files.items()
        if path in generated_files
    )
    files = max(len(oracle_files), len(generated_files))
    return total / files if files else 0.0


def exact_patch_match(generated: str, oracle: str) -> bool:
    """Whether both diffs change the same files with the same `+`/`-` lines, whatever their context or line numbers.

    Trailing whitespace and `\\ No newline at end of file` markers are ignored.
    """
    generated_files, oracle_files = split_diff_by_file(generated), split_diff_by_file(oracle)
    return generated_files.keys() == oracle_files.keys() and all(
        _changed_lines(generated_files[path]) == _changed_lines(chunk) for path, chunk in oracle_files.items()
    )


def _check_lengths(completions: list, **columns: list) -> None:
    for name, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(values)} `{name}` values: need one each")


def diff_similarity_reward(
    completions: list, generated_diff: list[str | None], patch: list[str], **kwargs
) -> list[float]:
    r"""`unified_diff_similarity` of each generated diff with the oracle `patch`; 0.0 for a failed episode (None).

    >>> patch = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    >>> diff_similarity_reward(completions=[[]] * 3, generated_diff=[patch, "", None], patch=[patch] * 3)
    [1.0, 0.0, 0.0]
    >>> 0.5 < diff_similarity_reward([[]], [patch.replace("x = 2", "x = 3")], [patch])[0] < 1.0
    True
    """
    _check_lengths(completions, generated_diff=generated_diff, patch=patch)
    return [
        0.0 if diff is None else unified_diff_similarity(diff, oracle)
        for diff, oracle in zip(generated_diff, patch, strict=True)
    ]


def exact_patch_reward(completions: list, generated_diff: list[str | None], patch: list[str], **kwargs) -> list[float]:
    r"""1.0 when a generated diff makes the oracle `patch`'s line changes (`exact_patch_match`), else 0.0.

    >>> patch = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    >>> moved = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -7,2 +7,2 @@\n-x = 1\n+x = 2\n y = 0\n"
    >>> exact_patch_reward(completions=[[]] * 3, generated_diff=[moved, patch + "+z\n", None], patch=[patch] * 3)
    [1.0, 0.0, 0.0]
    """
    _check_lengths(completions, generated_diff=generated_diff, patch=patch)
    return [
        float(diff is not None and exact_patch_match(diff, oracle))
        for diff, oracle in zip(generated_diff, patch, strict=True)
    ]


def non_empty_patch_reward(completions: list, generated_diff: list[str | None], **kwargs) -> list[float]:
    r"""1.0 when a generated diff adds or removes at least one line, else 0.0 (renames and mode changes count 0).

    >>> patch = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    >>> non_empty_patch_reward(completions=[[]] * 4, generated_diff=[patch, "", "  \n", None])
    [1.0, 0.0, 0.0, 0.0]
    """
    _check_lengths(completions, generated_diff=generated_diff)
    return [
        float(diff is not None and any(map(_changed_lines, split_diff_by_file(diff).values())))
        for diff in generated_diff
    ]


class TestsPassReward:
    """1.0 when the task's tests pass on the agent's diff, else 0.0: the real check, and the slow one.

    For each episode: a fresh copy of the repository at `base_commit` (`data.Workspaces`); inside a `Sandbox` (the
    diff is the agent's code), apply `generated_diff`, restore the files `test_patch` touches and apply it (so an
    agent cannot pass by editing the tests), then run `test_command` (default `python -m pytest -q`) on
    `FAIL_TO_PASS + PASS_TO_PASS` (all tests when the row names none) within `seconds`. A diff that does not apply
    scores 0.0. Episodes are checked `workers` at a time.

    Usage: `reward_funcs=[diff_similarity_reward, TestsPassReward(Workspaces("cache"))]`.
    """

    __test__ = False  # not a pytest test class, despite the name
    __name__ = "tests_pass_reward"

    def __init__(self, workspaces, seconds: float = 120.0, workers: int = 4):
        self.workspaces, self.seconds, self.workers = workspaces, seconds, workers

    def __call__(self, completions, generated_diff, repo, base_commit, **columns) -> list[float]:
        _check_lengths(completions, generated_diff=generated_diff, repo=repo, base_commit=base_commit)
        keys = ("test_patch", "FAIL_TO_PASS", "PASS_TO_PASS", "test_command", "instance_id")
        rows = [
            {"repo": r, "base_commit": c, **{k: columns[k][i] for k in keys if columns.get(k) is not None}}
            for i, (r, c) in enumerate(zip(repo, base_commit, strict=True))
        ]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.score, rows, generated_diff))

    def score(self, row: dict, diff: str | None) -> float:
        """The reward of one episode (see the class docstring)."""
        if not diff or not diff.strip():
            return 0.0
        workspace = self.workspaces.checkout(row)
        try:
            with Sandbox(workspace, limits=Limits(seconds=self.seconds), env=self.workspaces.env) as box:
                patches = {"agent.diff": diff, "tests.diff": row.get("test_patch") or ""}
                for name, text in patches.items():
                    (box.scratch / name).write_text(text if text.endswith("\n") else text + "\n")
                if not box.run('git apply --whitespace=nowarn "$TMPDIR/agent.diff"').ok:
                    return 0.0
                test_files = [p for p in split_diff_by_file(patches["tests.diff"]) if (workspace / p).exists()]
                restore = " ".join(map(shlex.quote, test_files))
                if patches["tests.diff"].strip():
                    reset = f"git checkout HEAD -- {restore} 2>/dev/null; " if restore else ""
                    if not box.run(f'{reset}git apply --whitespace=nowarn "$TMPDIR/tests.diff"').ok:
                        return 0.0
                tests = test_ids(row.get("FAIL_TO_PASS")) + test_ids(row.get("PASS_TO_PASS"))
                command = row.get("test_command") or "python -m pytest -q -p no:cacheprovider"
                return 1.0 if box.run(" ".join([command, *map(shlex.quote, tests)])).ok else 0.0
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
