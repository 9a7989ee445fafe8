"""An offline toy suite of repository-repair tasks in SWE-bench / SWE-Gym form, built from the files in `toy_data/`.

What it is: five small pure-Python repositories (stdlib only, each a package of a few modules with a
`tests/test_basic.py`) written as git repositories under `OUT_DIR/repos/`, plus 40 tasks (8 per repository) in
`OUT_DIR/tasks.jsonl`. Each task is one commit on top of the repository's clean commit that breaks one source line
(kept reachable by the ref `refs/tasks/<instance_id>`); its row carries the fields SWE-bench-style harnesses read:
`instance_id`, `repo` (the absolute path of the built repository), `base_commit` (the buggy commit), `problem_statement`,
`patch` (the oracle fix as a `git diff`), `test_patch` (adds a new test file that fails on the bug), `FAIL_TO_PASS`,
`PASS_TO_PASS`, `test_command`, `split` ("train" for tasks 1-6 of each repository, "test" for tasks 7-8) and
`version`. Everything is deterministic: the same commit SHAs on every machine and every run, no network.

What it is not: a benchmark. The bugs are one-line and every problem statement ends with a hint line that names the
file, the wrong line and the fixed line, so that a tiny model in a demo can learn the task format (find the file,
edit the line, run the tests) quickly. Real suites (SWE-bench, SWE-Gym) give no such hint.

The data, next to this file (LF line endings, pinned by `.gitattributes`: the commit SHAs depend on every byte):
* `toy_data/repos/<repo>/`: each repository at its clean commit, as ordinary files (its tests pass there).
* `toy_data/tasks.json`: per repository, in build order, its bugs: `instance_id`, `file`, the `fixed` line and the
  `buggy` line that replaces it (compared without indentation), the `statement` (a list of lines), `fail_to_pass`
  (the test functions of the task's new test file) and `breaks` (tests of `tests/test_basic.py` the bug also breaks,
  so not PASS_TO_PASS).
* `toy_data/task_tests/<repo>/test_<repo>_<n>.py`: task n's new test file, committed as `tests/test_<repo>_<n>.py` by
  its `test_patch`.
* `toy_data/ruff.toml`: the project's lint and format rules for that code, with the toy packages' import layout.

Consumers fetch one task without the rest of the history: each repository allows fetching any commit by SHA
(`git fetch --depth 1 file://<repo> <base_commit>`).

Setup/Usage:
    python examples/code_repair/toy_suite.py OUT_DIR [--verify]

    Needs only git and Python (pytest for --verify, which checks every task: the new tests fail on the bug, pass
    after the oracle patch, and PASS_TO_PASS passes before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from code_repair.gitcmd import git


DATA = Path(__file__).resolve().parent / "toy_data"
SKIPPED = ("__pycache__", ".pytest_cache", ".ruff_cache")  # caches tools may leave in toy_data/repos/: never committed
VERSION = "toy-1"
TEST_COMMAND = "python -m pytest -q -p no:cacheprovider"
# The environment of commands run in toy workspaces (`data.command_env`): the toy tests need no pytest plugins, and
# the plugins of the Python that runs them (this project's dev extras: hypothesis, schemathesis, ...) make pytest
# start in ~1.8 s instead of ~0.2 s, for the agent's test runs and the tests-pass reward alike.
COMMAND_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
TRAIN_TASKS_PER_REPO = 6  # tasks 1-6 of each repository are "train", the rest "test"
TIMEOUT_S = 120  # deadline of every subprocess
GIT_CONFIG = ["-c", "init.defaultBranch=main", "-c", "core.autocrlf=false", "-c", "commit.gpgsign=false"]
FIXED_IDENTITY = {
    "GIT_AUTHOR_NAME": "Toy Suite",
    "GIT_AUTHOR_EMAIL": "toy-suite@example.invalid",
    "GIT_AUTHOR_DATE": "1704067200 +0000",  # 2024-01-01T00:00:00Z
    "GIT_COMMITTER_NAME": "Toy Suite",
    "GIT_COMMITTER_EMAIL": "toy-suite@example.invalid",
    "GIT_COMMITTER_DATE": "1704067200 +0000",
}
ROW_KEYS = (
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "base_commit",
    "instance_id",
    "patch",
    "problem_statement",
    "repo",
    "split",
    "test_command",
    "test_patch",
    "version",
)
BUG_KEYS = ("instance_id", "file", "fixed", "buggy", "statement", "fail_to_pass", "breaks")  # of toy_data/tasks.json


@dataclass(frozen=True)
class Bug:
    """One task (an entry of `toy_data/tasks.json`): `fixed` (a source line of `file`, compared without indentation)
    becomes `buggy`."""

    file: str
    fixed: str
    buggy: str
    statement: str  # the symptom, as a user would report it
    test: str  # the whole new test file; its tests fail on the bug and pass on the fix
    breaks: tuple[str, ...] = ()  # tests of tests/test_basic.py that the bug also breaks (not PASS_TO_PASS)
    instance_id: str = ""
    fail_to_pass: tuple[str, ...] = ()  # the test functions of `test`


# ---------------------------------------------------------------------------------------------------------------------
# data


def _read(path: Path) -> str:
    """The text of a data file, byte for byte (no newline translation)."""
    text = path.read_bytes().decode("utf-8")
    if "\r" in text:
        raise ValueError(f"{path}: CR line endings; the toy data is LF only (see .gitattributes): check it out again")
    return text


def repo_names() -> list[str]:
    """The repositories in build order (the order of `toy_data/tasks.json`)."""
    return list(load_bugs())


def repo_files(name: str) -> dict[str, str]:
    """Repository `name` at its clean commit: relative path -> text, from `toy_data/repos/<name>/`."""
    root = DATA / "repos" / name
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not set(rel.parts) & set(SKIPPED) and path.suffix != ".pyc":
            files[rel.as_posix()] = _read(path)
    if not files:
        raise FileNotFoundError(f"no toy repository {name!r} under {DATA / 'repos'}")
    return files


def load_bugs() -> dict[str, list[Bug]]:
    """The bugs of each repository, read from `toy_data/tasks.json` and `toy_data/task_tests/`, in build order."""
    with open(DATA / "tasks.json", encoding="utf-8") as handle:
        spec: dict[str, list[dict[str, Any]]] = json.load(handle)
    on_disk = sorted(path.name for path in (DATA / "repos").iterdir() if path.is_dir())
    if sorted(spec) != on_disk:
        raise ValueError(f"{DATA}: tasks.json has the repositories {sorted(spec)}, repos/ has {on_disk}")
    bugs: dict[str, list[Bug]] = {}
    for name, tasks in spec.items():
        bugs[name] = []
        for n, task in enumerate(tasks, start=1):
            where = f"{DATA / 'tasks.json'}: {name} task {n}"
            if set(task) != set(BUG_KEYS) or task["instance_id"] != f"toy__{name}-{n}":
                raise ValueError(f"{where}: wants exactly the keys {list(BUG_KEYS)} and instance_id toy__{name}-{n}")
            test = _read(DATA / "task_tests" / name / f"test_{name}_{n}.py")
            if task["fail_to_pass"] != _test_names(test):
                raise ValueError(f"{where}: fail_to_pass is not {_test_names(test)}, the tests of its test file")
            bugs[name].append(
                Bug(
                    file=task["file"],
                    fixed=task["fixed"],
                    buggy=task["buggy"],
                    statement="\n".join(task["statement"]),
                    test=test,
                    breaks=tuple(task["breaks"]),
                    instance_id=task["instance_id"],
                    fail_to_pass=tuple(task["fail_to_pass"]),
                )
            )
    return bugs


def __getattr__(name: str) -> Any:
    """`REPOS` and `BUGS`, the data this module held before it moved to `toy_data/`, read from the files."""
    if name == "REPOS":
        return {repo: repo_files(repo) for repo in repo_names()}
    if name == "BUGS":
        return load_bugs()
    if name == "PYTEST_INI":
        raise AttributeError(f"toy_suite.PYTEST_INI is gone: each repository has its own, {DATA}/repos/*/pytest.ini")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------------
# git


def git_env(**extra: str) -> dict[str, str]:
    """The environment for git calls: no user or system config, fixed identity and dates, nothing GIT_* inherited."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(FIXED_IDENTITY, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C", **extra)
    return env


def _git(cwd: Path | None, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run one git command (in `cwd`) with the authoring settings and environment; return its stdout."""
    return git(*GIT_CONFIG, *args, cwd=cwd, timeout=TIMEOUT_S, env=env or git_env(), stdin=stdin)


def _write_files(root: Path, files: dict[str, str]) -> None:
    """Write `files` (relative path -> text) under `root` with `\\n` newlines."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def _init_repo(repo: Path, files: dict[str, str]) -> str:
    """Create a fresh repository at `repo` holding `files` in one commit on `main`; return that commit's SHA."""
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    _write_files(repo, files)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"Initial import of {repo.name}")
    # Let consumers fetch a single task commit by SHA (shallow fetch of a commit that no branch points to).
    _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    _git(repo, "config", "uploadpack.allowReachableSHA1InWant", "true")
    return _git(repo, "rev-parse", "HEAD").strip()


def _tree_with(repo: Path, base: str, rel: str, text: str) -> str:
    """The SHA of the tree of commit `base` with file `rel` set to `text` (written with a private index)."""
    with tempfile.TemporaryDirectory(prefix="toy-index-") as tmp:
        env = git_env(GIT_INDEX_FILE=str(Path(tmp) / "index"))
        blob = _git(repo, "hash-object", "-w", "--stdin", stdin=text).strip()
        _git(repo, "read-tree", base, env=env)
        _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
        return _git(repo, "write-tree", env=env).strip()


def _diff(repo: Path, old: str, new: str, *paths: str) -> str:
    """`git diff old new -- paths` (plain unified diff with a/ b/ prefixes)."""
    return _git(repo, "diff", "--no-color", "--no-ext-diff", old, new, "--", *paths)


# ---------------------------------------------------------------------------------------------------------------------
# building


def _break_line(text: str, bug: Bug, where: str) -> str:
    """`text` with the one line whose stripped form is `bug.fixed` replaced by `bug.buggy` (same indentation)."""
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.strip() == bug.fixed]
    if len(hits) != 1:
        raise AssertionError(f"{where}: the line `{bug.fixed}` occurs {len(hits)} times in {bug.file}, expected 1")
    line = lines[hits[0]]
    lines[hits[0]] = line[: len(line) - len(line.lstrip())] + bug.buggy
    return "\n".join(lines)


def _check_unique(patch: str, buggy_text: str, bug: Bug, where: str) -> None:
    """Assert that the patch is one hunk changing one line, and that its old side and the buggy line are unique."""
    hunks = re.split(r"^@@[^\n]*@@[^\n]*\n", patch, flags=re.M)[1:]
    if len(hunks) != 1:
        raise AssertionError(f"{where}: the oracle patch has {len(hunks)} hunks, expected 1")
    lines = hunks[0].splitlines()
    removed = [line for line in lines if line.startswith("-")]
    added = [line for line in lines if line.startswith("+")]
    if len(removed) != 1 or len(added) != 1:
        raise AssertionError(f"{where}: the oracle patch changes {len(removed)}/{len(added)} lines, expected 1/1")
    old_side = "".join(line[1:] + "\n" for line in lines if line[:1] in (" ", "-"))
    if ("\n" + buggy_text).count("\n" + old_side) != 1:
        raise AssertionError(f"{where}: the old side of the hunk is not unique in the buggy {bug.file}:\n{old_side}")
    if buggy_text.count(bug.buggy) != 1:
        raise AssertionError(f"{where}: the buggy line `{bug.buggy}` occurs {buggy_text.count(bug.buggy)} times")


def _test_names(source: str) -> list[str]:
    """Names of the module-level test functions of a test file."""
    return re.findall(r"^def (test_\w+)\(", source, flags=re.M)


def hint_line(file: str, buggy: str, fixed: str) -> str:
    """The last line of every toy statement (`scripted_model.HINT` reads it back)."""
    return f"Hint: in {file} the line `{buggy}` is wrong; it should be `{fixed}`."


def _make_task(repo: Path, name: str, n: int, clean: str, files: dict[str, str], bug: Bug) -> dict:
    """Commit the bug of task `n` on top of `clean`, keep it under refs/tasks/, and return the task's row."""
    instance_id = f"toy__{name}-{n}"
    if "`" in bug.fixed + bug.buggy or bug.fixed == bug.buggy:
        raise AssertionError(f"{instance_id}: bad bug spec (backticks, or no change)")
    if bug.file.startswith("tests/"):
        raise AssertionError(f"{instance_id}: bugs go into source files, not tests")
    buggy_text = _break_line(files[bug.file], bug, instance_id)
    tree = _tree_with(repo, clean, bug.file, buggy_text)
    base = _git(repo, "commit-tree", tree, "-p", clean, "-m", f"Snapshot for {instance_id}").strip()
    _git(repo, "update-ref", f"refs/tasks/{instance_id}", base)
    patch = _diff(repo, base, clean, bug.file)
    _check_unique(patch, buggy_text, bug, instance_id)

    test_file = f"tests/test_{name}_{n}.py"
    test_patch = _diff(repo, base, _tree_with(repo, base, test_file, bug.test), test_file)
    basic = _test_names(files["tests/test_basic.py"])
    unknown = set(bug.breaks) - set(basic)
    if unknown or not _test_names(bug.test):
        raise AssertionError(f"{instance_id}: unknown tests in breaks {sorted(unknown)}, or no test in the new file")
    pass_to_pass = [f"tests/test_basic.py::{test}" for test in basic if test not in bug.breaks]
    if not pass_to_pass:
        raise AssertionError(f"{instance_id}: PASS_TO_PASS is empty")
    hint = hint_line(bug.file, bug.buggy, bug.fixed)
    return {
        "instance_id": instance_id,
        "repo": str(repo),
        "base_commit": base,
        "problem_statement": f"{bug.statement.strip()}\n\n{hint}",
        "patch": patch,
        "test_patch": test_patch,
        "FAIL_TO_PASS": [f"{test_file}::{test}" for test in _test_names(bug.test)],
        "PASS_TO_PASS": pass_to_pass,
        "test_command": TEST_COMMAND,
        "split": "train" if n <= TRAIN_TASKS_PER_REPO else "test",
        "version": VERSION,
    }


def build(out_dir: Path) -> list[dict]:
    """Build the repositories under `out_dir/repos/` and the rows in `out_dir/tasks.jsonl` (rebuilt from scratch,
    so building twice gives the same result); return the rows."""
    out_dir = Path(out_dir).resolve()
    repos_dir = out_dir / "repos"
    if repos_dir.exists():
        shutil.rmtree(repos_dir)
    rows = []
    for name, bugs in load_bugs().items():
        repo = repos_dir / name
        files = repo_files(name)
        clean = _init_repo(repo, files)
        for n, bug in enumerate(bugs, start=1):
            rows.append(_make_task(repo, name, n, clean, files, bug))
    with open(out_dir / "tasks.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# verifying


def run_pytest(work: Path, command: str, node_ids: list[str], report: Path) -> tuple[dict[str, str], str]:
    """Run `command` + `node_ids` in `work` with a JUnit report, in the toy suite's environment (`COMMAND_ENV`, no
    PYTEST_ADDOPTS or PYTEST_PLUGINS, no bytecode written); return each test's outcome and the output."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    env = {key: value for key, value in os.environ.items() if key not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env.update(PYTHONDONTWRITEBYTECODE="1", **COMMAND_ENV)
    proc = subprocess.run(
        [*argv, *node_ids, f"--junitxml={report}"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            kinds = {child.tag for child in case}
            outcomes[node] = "failed" if "failure" in kinds else "error" if "error" in kinds else "passed"
            if "skipped" in kinds:
                outcomes[node] = "skipped"
    return outcomes, proc.stdout + proc.stderr


def _expect(row: dict, stage: str, outcomes: dict[str, str], output: str, wanted: dict[str, str]) -> None:
    """Raise an AssertionError naming the instance when an outcome is not the wanted one."""
    wrong = {node: outcomes.get(node, "missing") for node, want in wanted.items() if outcomes.get(node) != want}
    if wrong:
        tail = output[-3000:]
        raise AssertionError(
            f"{row['instance_id']} {stage}: unexpected outcomes {wrong}\n--- pytest output ---\n{tail}"
        )


def _apply(work: Path, row: dict, key: str) -> None:
    """`git apply` the row's `key` patch in `work`; an AssertionError naming the instance when it does not apply."""
    try:
        _git(work, "apply", "-", stdin=row[key])
    except RuntimeError as error:
        raise AssertionError(f"{row['instance_id']}: {key} does not apply: {error}") from error


def _verify_row(row: dict) -> None:
    """Check one task in a temporary clone at its base commit (see `verify`)."""
    f2p, p2p = row["FAIL_TO_PASS"], row["PASS_TO_PASS"]
    if not f2p or not p2p or set(f2p) & set(p2p):
        raise AssertionError(f"{row['instance_id']}: FAIL_TO_PASS and PASS_TO_PASS must be non-empty and disjoint")
    with tempfile.TemporaryDirectory(prefix="toy-verify-") as tmp:
        work = Path(tmp) / "work"
        _git(None, "clone", "-q", "--shared", "--no-checkout", row["repo"], str(work))
        _git(work, "checkout", "-q", "--detach", row["base_commit"])
        _apply(work, row, "test_patch")
        outcomes, output = run_pytest(work, row["test_command"], f2p + p2p, Path(tmp) / "buggy.xml")
        wanted = {**dict.fromkeys(f2p, "failed"), **dict.fromkeys(p2p, "passed")}
        _expect(row, "on the buggy code", outcomes, output, wanted)
        _apply(work, row, "patch")
        outcomes, output = run_pytest(work, row["test_command"], f2p + p2p, Path(tmp) / "fixed.xml")
        _expect(row, "after the oracle patch", outcomes, output, dict.fromkeys(f2p + p2p, "passed"))


def verify(rows: list[dict], jobs: int | None = None) -> None:
    """Check every task: with `test_patch` applied at `base_commit`, FAIL_TO_PASS fails and PASS_TO_PASS passes;
    with `patch` applied too, both pass. Runs `jobs` tasks at a time (default: the CPU count), one progress line
    per task on stderr; raises AssertionError naming the instance, with pytest's output tail, on the first problem."""
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        started = time.monotonic()
        futures = {pool.submit(_verify_row, row): row["instance_id"] for row in rows}
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                future.result()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            print(f"[{done}/{len(rows)}] {futures[future]} ok ({time.monotonic() - started:.1f} s)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Command line: build the suite into OUT_DIR, optionally verify it, print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write repos/ and tasks.jsonl")
    parser.add_argument("--verify", action="store_true", help="run every task's tests before and after the fix")
    parser.add_argument("--jobs", type=int, default=None, help="tasks verified at a time (default: CPU count)")
    args = parser.parse_args(argv)
    rows = build(args.out_dir)
    if args.verify:
        verify(rows, jobs=args.jobs)
    splits = [row["split"] for row in rows]
    repos = sorted({Path(row["repo"]).name for row in rows})
    print(f"{len(repos)} repos ({', '.join(repos)}), {len(rows)} tasks: {splits.count('train')} train, ", end="")
    print(f"{splits.count('test')} test -> {Path(args.out_dir).resolve() / 'tasks.jsonl'}")
    if args.verify:
        print("verified: every FAIL_TO_PASS fails on the bug and passes after the oracle patch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
