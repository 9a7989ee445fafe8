"""An offline toy suite of repository-repair tasks in SWE-bench / SWE-Gym form, built from data in this file.

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

from data import git


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


@dataclass(frozen=True)
class Bug:
    """One task: `fixed` (a source line of `file`, compared without indentation) becomes `buggy`."""

    file: str
    fixed: str
    buggy: str
    statement: str  # the symptom, as a user would report it
    test: str  # the whole new test file; its tests fail on the bug and pass on the fix
    breaks: tuple[str, ...] = ()  # tests of tests/test_basic.py that the bug also breaks (not PASS_TO_PASS)


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
    for name, files in REPOS.items():
        repo = repos_dir / name
        clean = _init_repo(repo, files)
        for n, bug in enumerate(BUGS[name], start=1):
            rows.append(_make_task(repo, name, n, clean, files, bug))
    with open(out_dir / "tasks.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# verifying


def _pytest(work: Path, command: str, node_ids: list[str], report: Path) -> tuple[dict[str, str], str]:
    """Run `command` + `node_ids` in `work` with a JUnit report; return each test's outcome and the output."""
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
        outcomes, output = _pytest(work, row["test_command"], f2p + p2p, Path(tmp) / "buggy.xml")
        wanted = {**dict.fromkeys(f2p, "failed"), **dict.fromkeys(p2p, "passed")}
        _expect(row, "on the buggy code", outcomes, output, wanted)
        _apply(work, row, "patch")
        outcomes, output = _pytest(work, row["test_command"], f2p + p2p, Path(tmp) / "fixed.xml")
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


# ---------------------------------------------------------------------------------------------------------------------
# data: the repositories (relative path -> text) and the bugs of each


PYTEST_INI = "[pytest]\npythonpath = .\ntestpaths = tests\n"

REPOS: dict[str, dict[str, str]] = {}
BUGS: dict[str, list[Bug]] = {}

REPOS["calc"] = {
    "README.md": (
        '# calc\n\nA small arithmetic expression evaluator: `evaluate("2 * (x + 1)", {"x": 3})`.\n\n'
        "Operators: `+ - * / %`, `^` (power, right-associative), unary minus and parentheses. "
        "Functions: `sqrt`, `abs`, `round`. Constants: `pi`, `e`.\n"
    ),
    "pytest.ini": PYTEST_INI,
    "calc/__init__.py": r'''"""A small arithmetic expression evaluator."""

from calc.evaluator import EvalError, evaluate
from calc.parser import ParseError, parse
from calc.tokenizer import TokenizeError, tokenize

__all__ = ["EvalError", "ParseError", "TokenizeError", "evaluate", "parse", "tokenize"]
''',
    "calc/tokenizer.py": r'''"""Split an arithmetic expression into tokens."""

from __future__ import annotations

from dataclasses import dataclass

OPERATORS = "+-*/%^()"


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "op" or "name"
    text: str
    pos: int


class TokenizeError(ValueError):
    """Raised on a character that cannot start a token."""


def _read_number(source: str, start: int) -> int:
    """Index just past the number that starts at `start` (digits with at most one dot)."""
    end = start
    seen_dot = False
    while end < len(source) and (source[end].isdigit() or source[end] == "."):
        if source[end] == ".":
            if seen_dot:
                break
            seen_dot = True
        end += 1
    return end


def _read_name(source: str, start: int) -> int:
    """Index just past the identifier that starts at `start`."""
    end = start
    while end < len(source) and (source[end].isalnum() or source[end] == "_"):
        end += 1
    return end


def tokenize(source: str) -> list[Token]:
    """Turn `source` into a list of tokens, skipping whitespace."""
    tokens: list[Token] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or ch == ".":
            end = _read_number(source, i)
            tokens.append(Token("num", source[i:end], i))
            i = end
        elif ch.isalpha() or ch == "_":
            end = _read_name(source, i)
            tokens.append(Token("name", source[i:end], i))
            i = end
        elif ch in OPERATORS:
            tokens.append(Token("op", ch, i))
            i += 1
        else:
            raise TokenizeError(f"unexpected character {ch!r} at position {i}")
    return tokens
''',
    "calc/parser.py": r'''"""Precedence-climbing parser: tokens -> a tree of tuples."""

from __future__ import annotations

from calc.tokenizer import Token, tokenize

# Binding power of each binary operator; higher binds tighter.
PRECEDENCE = {"+": 10, "-": 10, "*": 20, "/": 20, "%": 20, "^": 30}
RIGHT_ASSOC = {"^"}


class ParseError(ValueError):
    """Raised when the tokens do not form a valid expression."""


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> Token | None:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return None

    def advance(self) -> Token:
        token = self.peek()
        if token is None:
            raise ParseError("unexpected end of input")
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        token = self.advance()
        if token.text != text:
            raise ParseError(f"expected {text!r} at position {token.pos}, got {token.text!r}")

    def expression(self, min_power: int = 0):
        left = self.unary()
        while True:
            token = self.peek()
            if token is None or token.kind != "op" or token.text not in PRECEDENCE:
                return left
            power = PRECEDENCE[token.text]
            if power < min_power:
                return left
            self.advance()
            next_min = power if token.text in RIGHT_ASSOC else power + 1
            right = self.expression(next_min)
            left = ("binop", token.text, left, right)

    def unary(self):
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == "-":
            self.advance()
            return ("neg", self.unary())
        return self.primary()

    def primary(self):
        token = self.advance()
        if token.kind == "num":
            return ("num", float(token.text))
        if token.kind == "name":
            after = self.peek()
            if after is not None and after.text == "(":
                self.advance()
                argument = self.expression()
                self.expect(")")
                return ("call", token.text, argument)
            return ("var", token.text)
        if token.text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        raise ParseError(f"unexpected token {token.text!r} at position {token.pos}")


def parse(source: str):
    """Parse `source` into an expression tree."""
    parser = Parser(tokenize(source))
    tree = parser.expression()
    leftover = parser.peek()
    if leftover is not None:
        raise ParseError(f"unexpected token {leftover.text!r} at position {leftover.pos}")
    return tree
''',
    "calc/evaluator.py": r'''"""Evaluate the trees built by calc.parser."""

from __future__ import annotations

import math

from calc.parser import parse

FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round}
CONSTANTS = {"pi": math.pi, "e": math.e}


class EvalError(ValueError):
    """Raised for unknown names and invalid arithmetic."""


def apply_binop(op: str, left: float, right: float) -> float:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        if right == 0:
            raise EvalError("division by zero")
        return left / right
    if op == "%":
        return left % right
    if op == "^":
        return left**right
    raise EvalError(f"unknown operator {op!r}")


def eval_tree(tree, variables: dict[str, float] | None = None) -> float:
    variables = variables or {}
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "neg":
        return -eval_tree(tree[1], variables)
    if kind == "var":
        name = tree[1]
        if name in variables:
            return variables[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        raise EvalError(f"unknown variable {name!r}")
    if kind == "call":
        function = FUNCTIONS.get(tree[1])
        if function is None:
            raise EvalError(f"unknown function {tree[1]!r}")
        return function(eval_tree(tree[2], variables))
    if kind == "binop":
        return apply_binop(tree[1], eval_tree(tree[2], variables), eval_tree(tree[3], variables))
    raise EvalError(f"bad node {kind!r}")


def evaluate(source: str, variables: dict[str, float] | None = None) -> float:
    """Parse and evaluate `source`; `variables` maps names to values."""
    return eval_tree(parse(source), variables)
''',
    "tests/test_basic.py": r"""import pytest

from calc import EvalError, evaluate, tokenize


def test_tokenize_simple():
    assert [token.text for token in tokenize("1 + 23")] == ["1", "+", "23"]


def test_addition():
    assert evaluate("1 + 2") == 3


def test_precedence():
    assert evaluate("2 + 3 * 4") == 14


def test_parentheses():
    assert evaluate("(2 + 3) * 4") == 20


def test_variables():
    assert evaluate("x * 2", {"x": 5}) == 10


def test_function_call():
    assert evaluate("sqrt(16)") == 4


def test_division_by_zero():
    with pytest.raises(EvalError):
        evaluate("1 / 0")
""",
}

BUGS["calc"] = [
    Bug(
        file="calc/evaluator.py",
        fixed="return left - right",
        buggy="return right - left",
        statement="""Subtraction gives the wrong sign. `evaluate("10 - 4")` returns -6.0 instead of 6.0, and
`evaluate("3 - 5")` returns 2.0. Addition and multiplication look fine.""",
        test=r"""from calc import evaluate


def test_subtraction_order():
    assert evaluate("10 - 4") == 6
    assert evaluate("3 - 5") == -2
""",
    ),
    Bug(
        file="calc/parser.py",
        fixed="next_min = power if token.text in RIGHT_ASSOC else power + 1",
        buggy="next_min = power + 1 if token.text in RIGHT_ASSOC else power",
        statement="""Chained operators group the wrong way. `evaluate("10 - 4 - 3")` returns 9.0, as if it were
`10 - (4 - 3)`, instead of 3.0. Powers are off too: `2 ^ 3 ^ 2` should be 512.""",
        test=r"""from calc import evaluate


def test_subtraction_is_left_associative():
    assert evaluate("10 - 4 - 3") == 3


def test_power_is_right_associative():
    assert evaluate("2 ^ 3 ^ 2") == 512
""",
    ),
    Bug(
        file="calc/tokenizer.py",
        fixed='OPERATORS = "+-*/%^()"',
        buggy='OPERATORS = "+-*/%()"',
        statement="""The power operator is rejected. `evaluate("2 ^ 3")` raises
`TokenizeError: unexpected character '^' at position 2` although the README lists `^` as an operator.""",
        test=r"""from calc import evaluate


def test_power_operator():
    assert evaluate("2 ^ 3") == 8
""",
    ),
    Bug(
        file="calc/evaluator.py",
        fixed="return -eval_tree(tree[1], variables)",
        buggy="return eval_tree(tree[1], variables)",
        statement="""Unary minus is ignored: `evaluate("-5 + 2")` returns 7.0 instead of -3.0 and `evaluate("4 * -2")`
returns 8.0. Negative numbers are simply treated as positive ones.""",
        test=r"""from calc import evaluate


def test_unary_minus():
    assert evaluate("-5 + 2") == -3
    assert evaluate("4 * -2") == -8
""",
    ),
    Bug(
        file="calc/evaluator.py",
        fixed="if right == 0:",
        buggy="if right <= 0:",
        statement="""Dividing by a negative number fails. `evaluate("8 / -2")` raises `EvalError: division by zero`
instead of returning -4.0.""",
        test=r"""from calc import evaluate


def test_divide_by_negative():
    assert evaluate("8 / -2") == -4
""",
    ),
    Bug(
        file="calc/parser.py",
        fixed='PRECEDENCE = {"+": 10, "-": 10, "*": 20, "/": 20, "%": 20, "^": 30}',
        buggy='PRECEDENCE = {"+": 10, "-": 10, "*": 20, "/": 20, "%": 10, "^": 30}',
        statement="""The modulo operator has the wrong precedence. `evaluate("1 + 7 % 4")` returns 0.0 because it is
computed as `(1 + 7) % 4`; it should be 4.0, with `%` binding as tightly as `*` and `/`.""",
        test=r"""from calc import evaluate


def test_modulo_precedence():
    assert evaluate("1 + 7 % 4") == 4
    assert evaluate("10 - 9 % 4") == 9
""",
    ),
    Bug(
        file="calc/parser.py",
        fixed='return ("num", float(token.text))',
        buggy='return ("num", int(token.text))',
        statement="""Decimal numbers crash the evaluator. `evaluate("1.5 * 2")` raises
`ValueError: invalid literal for int() with base 10: '1.5'`. Whole numbers work.""",
        test=r"""from calc import evaluate


def test_decimal_numbers():
    assert evaluate("1.5 * 2") == 3
    assert evaluate("0.25 + .5") == 0.75
""",
    ),
    Bug(
        file="calc/tokenizer.py",
        fixed='while end < len(source) and (source[end].isalnum() or source[end] == "_"):',
        buggy='while end < len(source) and (source[end].isalpha() or source[end] == "_"):',
        statement="""Variable names that contain digits cannot be used. `evaluate("x2 + 1", {"x2": 4})` raises
`ParseError: unexpected token '2' at position 1` instead of returning 5.0.""",
        test=r"""from calc import evaluate, tokenize


def test_names_with_digits():
    assert evaluate("x2 + 1", {"x2": 4}) == 5


def test_name_token_keeps_digits():
    assert [token.text for token in tokenize("rate_3")] == ["rate_3"]
""",
    ),
]

REPOS["textkit"] = {
    "README.md": "# textkit\n\nSmall text helpers: identifier case conversion, wrapping and truncation, word statistics.\n",
    "pytest.ini": PYTEST_INI,
    "textkit/__init__.py": r'''"""Small text helpers."""

from textkit.case import split_words, to_camel, to_kebab, to_pascal, to_snake
from textkit.stats import average_word_length, is_palindrome, top_words, word_count, words
from textkit.wrap import center, dedent_lines, truncate, wrap

__all__ = [
    "average_word_length",
    "center",
    "dedent_lines",
    "is_palindrome",
    "split_words",
    "to_camel",
    "to_kebab",
    "to_pascal",
    "to_snake",
    "top_words",
    "truncate",
    "word_count",
    "words",
    "wrap",
]
''',
    "textkit/case.py": r'''"""Convert identifiers between naming styles."""

from __future__ import annotations

import re

# A position between a lower-case letter or digit and an upper-case letter: "someName" -> "some|Name".
_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def split_words(name: str) -> list[str]:
    """Split an identifier in camelCase, PascalCase, snake_case or kebab-case into lower-case words."""
    spaced = _BOUNDARY.sub(" ", name)
    parts = re.split(r"[\s_\-]+", spaced)
    return [part.lower() for part in parts if part]


def to_snake(name: str) -> str:
    return "_".join(split_words(name))


def to_kebab(name: str) -> str:
    return "-".join(split_words(name))


def to_camel(name: str) -> str:
    """camelCase: the first word stays lower-case."""
    words = split_words(name)
    if not words:
        return ""
    return words[0] + "".join(word.capitalize() for word in words[1:])


def to_pascal(name: str) -> str:
    return "".join(word.capitalize() for word in split_words(name))
''',
    "textkit/wrap.py": r'''"""Wrapping, truncating, centering and dedenting text."""

from __future__ import annotations


def truncate(text: str, width: int, ellipsis: str = "...") -> str:
    """Shorten `text` to at most `width` characters, ending with `ellipsis` when it was cut."""
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return ellipsis[:width]
    return text[: width - len(ellipsis)] + ellipsis


def wrap(text: str, width: int = 70) -> list[str]:
    """Greedy word wrap into lines of at most `width` characters (a longer word gets a line of its own)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def center(text: str, width: int, fill: str = " ") -> str:
    """Center `text` in `width` characters; when the padding is odd, the extra fill character goes right."""
    total = max(width - len(text), 0)
    left = total // 2
    right = total - left
    return fill * left + text + fill * right


def dedent_lines(lines: list[str]) -> list[str]:
    """Remove the indentation that all non-blank lines share."""
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    if not indents:
        return list(lines)
    cut = min(indents)
    return [line[cut:] for line in lines]
''',
    "textkit/stats.py": r'''"""Word statistics."""

from __future__ import annotations

import re
from collections import Counter

WORD_RE = re.compile(r"[A-Za-z']+")
STOP_WORDS = frozenset({"a", "an", "and", "in", "of", "or", "the", "to"})


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased (apostrophes stay inside words)."""
    return [match.group().lower() for match in WORD_RE.finditer(text)]


def word_count(text: str) -> int:
    return len(words(text))


def top_words(text: str, n: int = 3, skip_stop_words: bool = True) -> list[tuple[str, int]]:
    """The `n` most frequent words with their counts, most frequent first, ties in alphabetical order."""
    counts = Counter(word for word in words(text) if not (skip_stop_words and word in STOP_WORDS))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]


def average_word_length(text: str) -> float:
    found = words(text)
    if not found:
        return 0.0
    return sum(len(word) for word in found) / len(found)


def is_palindrome(text: str) -> bool:
    """True when the letters and digits of `text` read the same backwards, ignoring case."""
    letters = [ch.lower() for ch in text if ch.isalnum()]
    return letters == letters[::-1]
''',
    "tests/test_basic.py": r"""from textkit import center, to_camel, to_snake, top_words, truncate, word_count, wrap


def test_to_snake():
    assert to_snake("someName") == "some_name"


def test_to_camel():
    assert to_camel("some_long_name") == "someLongName"


def test_truncate_short_text_unchanged():
    assert truncate("hello", 10) == "hello"


def test_wrap():
    assert wrap("the quick brown fox", 10) == ["the quick", "brown fox"]


def test_center_even():
    assert center("ab", 6, "*") == "**ab**"


def test_word_count():
    assert word_count("It's a fine day, isn't it?") == 6


def test_top_words():
    assert top_words("b a b c c b", 2, skip_stop_words=False) == [("b", 3), ("c", 2)]
""",
}

BUGS["textkit"] = [
    Bug(
        file="textkit/wrap.py",
        fixed="elif len(current) + 1 + len(word) <= width:",
        buggy="elif len(current) + 1 + len(word) < width:",
        statement="""`wrap()` breaks lines too early. `wrap("aaaa bbbbb", 10)` returns `["aaaa", "bbbbb"]` although
"aaaa bbbbb" is exactly 10 characters and fits.""",
        test=r"""from textkit import wrap


def test_line_of_exactly_width_fits():
    assert wrap("aaaa bbbbb", 10) == ["aaaa bbbbb"]
""",
    ),
    Bug(
        file="textkit/wrap.py",
        fixed="return text[: width - len(ellipsis)] + ellipsis",
        buggy="return text[:width] + ellipsis",
        statement="""`truncate()` returns strings longer than the width I ask for. `truncate("hello world", 8)` gives
"hello wo..." (11 characters) instead of "hello...".""",
        test=r"""from textkit import truncate


def test_truncate_respects_width():
    assert truncate("hello world", 8) == "hello..."
    assert len(truncate("a" * 50, 20)) == 20
""",
    ),
    Bug(
        file="textkit/wrap.py",
        fixed="left = total // 2",
        buggy="left = (total + 1) // 2",
        statement="""`center()` puts the odd padding character on the wrong side. `center("ab", 5, "*")` returns
"**ab*" but the docstring says the extra character goes to the right: "*ab**".""",
        test=r"""from textkit import center


def test_center_odd_padding_goes_right():
    assert center("ab", 5, "*") == "*ab**"
""",
    ),
    Bug(
        file="textkit/case.py",
        fixed='_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")',
        buggy='_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])")',
        statement="""Identifiers with a digit before a capital letter are not split. `to_snake("version2Beta")` returns
"version2beta" instead of "version2_beta", and `to_kebab("utf8String")` returns "utf8string".""",
        test=r"""from textkit import to_kebab, to_snake


def test_digit_before_capital_splits():
    assert to_snake("version2Beta") == "version2_beta"
    assert to_kebab("utf8String") == "utf8-string"
""",
    ),
    Bug(
        file="textkit/case.py",
        fixed='return "".join(word.capitalize() for word in split_words(name))',
        buggy='return "".join(word.title() for word in split_words(name))',
        statement="""`to_pascal()` capitalizes letters in the middle of words that contain digits.
`to_pascal("model_v2beta")` returns "ModelV2Beta" instead of "ModelV2beta".""",
        test=r"""from textkit import to_pascal


def test_pascal_keeps_inner_letters():
    assert to_pascal("model_v2beta") == "ModelV2beta"
""",
    ),
    Bug(
        file="textkit/stats.py",
        fixed="ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))",
        buggy="ranked = sorted(counts.items(), key=lambda item: (item[1], item[0]))",
        statement="""`top_words()` returns the rarest words instead of the most frequent ones. For "x y y z z z" with
n=1 I get `[("x", 1)]` rather than `[("z", 3)]`.""",
        test=r"""from textkit import top_words


def test_most_frequent_first():
    assert top_words("x y y z z z", 1) == [("z", 3)]
""",
        breaks=("test_top_words",),
    ),
    Bug(
        file="textkit/stats.py",
        fixed="letters = [ch.lower() for ch in text if ch.isalnum()]",
        buggy="letters = [ch for ch in text if ch.isalnum()]",
        statement="""`is_palindrome()` is case-sensitive although it should not be. `is_palindrome("Never odd or even")`
returns False, and so does `is_palindrome("Racecar")`.""",
        test=r"""from textkit import is_palindrome


def test_palindrome_ignores_case():
    assert is_palindrome("Never odd or even")
    assert is_palindrome("Racecar")
""",
    ),
    Bug(
        file="textkit/wrap.py",
        fixed="cut = min(indents)",
        buggy="cut = max(indents)",
        statement="""`dedent_lines()` cuts off too much. `dedent_lines(["  a", "    b"])` returns `["", "b"]`; the
relative indentation of the second line should be kept: `["a", "  b"]`.""",
        test=r"""from textkit import dedent_lines


def test_dedent_keeps_relative_indentation():
    assert dedent_lines(["  a", "    b"]) == ["a", "  b"]
""",
    ),
]

REPOS["shopcart"] = {
    "README.md": "# shopcart\n\nAn inventory and shopping-cart model; all money amounts are integer cents.\n",
    "pytest.ini": PYTEST_INI,
    "shopcart/__init__.py": r'''"""An inventory and shopping-cart model (money in integer cents)."""
''',
    "shopcart/inventory.py": r'''"""Products and their stock levels."""

from __future__ import annotations

from dataclasses import dataclass, field


class OutOfStock(Exception):
    """Raised when more units are requested than are in stock."""


@dataclass
class Product:
    sku: str
    name: str
    price_cents: int


@dataclass
class Inventory:
    products: dict[str, Product] = field(default_factory=dict)
    stock: dict[str, int] = field(default_factory=dict)

    def add_product(self, product: Product, quantity: int = 0) -> None:
        self.products[product.sku] = product
        self.stock[product.sku] = self.stock.get(product.sku, 0) + quantity

    def available(self, sku: str) -> int:
        return self.stock.get(sku, 0)

    def reserve(self, sku: str, quantity: int) -> None:
        """Take `quantity` units out of stock, or raise OutOfStock."""
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        if self.available(sku) < quantity:
            raise OutOfStock(f"only {self.available(sku)} of {sku} left")
        self.stock[sku] -= quantity

    def release(self, sku: str, quantity: int) -> None:
        """Put `quantity` units back into stock."""
        self.stock[sku] = self.available(sku) + quantity

    def low_stock(self, threshold: int = 5) -> list[str]:
        """SKUs with fewer than `threshold` units left, sorted."""
        return sorted(sku for sku, count in self.stock.items() if count < threshold)
''',
    "shopcart/pricing.py": r'''"""Discounts, tax and formatting, all in integer cents."""

from __future__ import annotations

TAX_RATE_PERCENT = 8


def percent_of(amount_cents: int, percent: float) -> int:
    """`percent` % of `amount_cents`, rounded half up to a whole cent."""
    return int(amount_cents * percent / 100 + 0.5)


def apply_discount(amount_cents: int, percent: float) -> int:
    """The amount after a discount of `percent` % (0 to 100)."""
    if not 0 <= percent <= 100:
        raise ValueError("a discount is between 0 and 100 percent")
    return amount_cents - percent_of(amount_cents, percent)


def bulk_discount_percent(quantity: int) -> int:
    """10 % off from 10 units of one product, 20 % off from 50 units."""
    if quantity >= 50:
        return 20
    if quantity >= 10:
        return 10
    return 0


def add_tax(amount_cents: int, rate_percent: float = TAX_RATE_PERCENT) -> int:
    return amount_cents + percent_of(amount_cents, rate_percent)


def format_cents(amount_cents: int) -> str:
    """1234 -> "$12.34"; negative amounts get a leading minus: -250 -> "-$2.50"."""
    sign = "-" if amount_cents < 0 else ""
    dollars, cents = divmod(abs(amount_cents), 100)
    return f"{sign}${dollars}.{cents:02d}"
''',
    "shopcart/cart.py": r'''"""A shopping cart that reserves stock as items are added."""

from __future__ import annotations

from shopcart.inventory import Inventory
from shopcart.pricing import add_tax, apply_discount, bulk_discount_percent


class Cart:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.lines: dict[str, int] = {}
        self.coupon_percent = 0

    def add(self, sku: str, quantity: int = 1) -> None:
        """Add `quantity` units of `sku`, reserving them in the inventory."""
        self.inventory.reserve(sku, quantity)
        self.lines[sku] = self.lines.get(sku, 0) + quantity

    def remove(self, sku: str, quantity: int | None = None) -> None:
        """Remove `quantity` units of `sku` (all of them when None) and put them back into stock."""
        held = self.lines.get(sku, 0)
        if quantity is None or quantity >= held:
            quantity = held
        self.inventory.release(sku, quantity)
        remaining = held - quantity
        if remaining:
            self.lines[sku] = remaining
        else:
            self.lines.pop(sku, None)

    def item_count(self) -> int:
        return sum(self.lines.values())

    def line_total(self, sku: str) -> int:
        """Price of one cart line in cents, after the bulk discount."""
        quantity = self.lines[sku]
        price = self.inventory.products[sku].price_cents
        return apply_discount(price * quantity, bulk_discount_percent(quantity))

    def subtotal(self) -> int:
        return sum(self.line_total(sku) for sku in self.lines)

    def apply_coupon(self, percent: int) -> None:
        """Coupons take 1 to 50 percent off the subtotal."""
        if not 0 < percent <= 50:
            raise ValueError("a coupon gives between 1 and 50 percent off")
        self.coupon_percent = percent

    def total(self) -> int:
        """The subtotal after the coupon, plus tax."""
        discounted = apply_discount(self.subtotal(), self.coupon_percent)
        return add_tax(discounted)
''',
    "tests/test_basic.py": r"""import pytest

from shopcart.cart import Cart
from shopcart.inventory import Inventory, OutOfStock, Product
from shopcart.pricing import format_cents


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory


def test_add_reserves_stock():
    inventory = make_inventory()
    cart = Cart(inventory)
    cart.add("apple", 4)
    assert inventory.available("apple") == 96
    assert cart.item_count() == 4


def test_out_of_stock():
    cart = Cart(make_inventory())
    with pytest.raises(OutOfStock):
        cart.add("pear", 4)


def test_subtotal_without_discount():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    cart.add("pear", 1)
    assert cart.subtotal() == 180


def test_total_includes_tax():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    assert cart.total() == 108


def test_format_cents():
    assert format_cents(1234) == "$12.34"
""",
}

_SHOP_SETUP = r"""from shopcart.cart import Cart
from shopcart.inventory import Inventory, Product


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory
"""

BUGS["shopcart"] = [
    Bug(
        file="shopcart/inventory.py",
        fixed="if self.available(sku) < quantity:",
        buggy="if self.available(sku) <= quantity:",
        statement="""I cannot buy the last units of a product. With 3 pears in stock, `cart.add("pear", 3)` raises
`OutOfStock: only 3 of pear left`, although 3 are exactly enough.""",
        test=_SHOP_SETUP
        + r"""

def test_reserve_all_remaining_units():
    inventory = make_inventory()
    Cart(inventory).add("pear", 3)
    assert inventory.available("pear") == 0
""",
    ),
    Bug(
        file="shopcart/pricing.py",
        fixed="if quantity >= 10:",
        buggy="if quantity > 10:",
        statement="""The bulk discount starts one unit late. Buying exactly 10 apples at 50 cents costs 500 cents, but the
pricing rules promise 10 % off from 10 units (450 cents).""",
        test=_SHOP_SETUP
        + r"""

def test_bulk_discount_from_ten_units():
    cart = Cart(make_inventory())
    cart.add("apple", 10)
    assert cart.subtotal() == 450
""",
    ),
    Bug(
        file="shopcart/pricing.py",
        fixed="dollars, cents = divmod(abs(amount_cents), 100)",
        buggy="dollars, cents = divmod(amount_cents, 100)",
        statement="""Refunds are formatted wrongly. `format_cents(-250)` returns "-$-3.50" instead of "-$2.50".
Positive amounts are fine.""",
        test=r"""from shopcart.pricing import format_cents


def test_format_negative_amount():
    assert format_cents(-250) == "-$2.50"
""",
    ),
    Bug(
        file="shopcart/inventory.py",
        fixed="self.stock[sku] = self.available(sku) + quantity",
        buggy="self.stock[sku] = self.available(sku) - quantity",
        statement="""Removing items from the cart loses stock instead of returning it. After adding 5 apples (100 in
stock) and removing 2 of them, `available("apple")` is 93 instead of 97.""",
        test=_SHOP_SETUP
        + r"""

def test_remove_returns_stock():
    inventory = make_inventory()
    cart = Cart(inventory)
    cart.add("apple", 5)
    cart.remove("apple", 2)
    assert inventory.available("apple") == 97
    assert cart.item_count() == 3
""",
    ),
    Bug(
        file="shopcart/cart.py",
        fixed="return add_tax(discounted)",
        buggy="return add_tax(self.subtotal())",
        statement="""Coupons have no effect on the total. With 2 apples (100 cents) and a 10 % coupon, `cart.total()` is
108 cents, the same as without the coupon; it should be 97 (90 plus tax).""",
        test=_SHOP_SETUP
        + r"""

def test_coupon_lowers_total():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    cart.apply_coupon(10)
    assert cart.total() == 97
""",
    ),
    Bug(
        file="shopcart/pricing.py",
        fixed="return int(amount_cents * percent / 100 + 0.5)",
        buggy="return int(amount_cents * percent / 100)",
        statement="""Tax is rounded down instead of to the nearest cent. `add_tax(1010)` returns 1090, but 8 % of 1010 is
80.8 cents, so the total should be 1091.""",
        test=r"""from shopcart.pricing import add_tax, percent_of


def test_tax_rounds_to_nearest_cent():
    assert add_tax(1010) == 1091


def test_percent_of_rounds_half_up():
    assert percent_of(5, 50) == 3
""",
    ),
    Bug(
        file="shopcart/cart.py",
        fixed="if not 0 < percent <= 50:",
        buggy="if not 0 < percent < 50:",
        statement="""Our 50 % coupons are refused. `cart.apply_coupon(50)` raises
`ValueError: a coupon gives between 1 and 50 percent off`, which contradicts its own message.""",
        test=_SHOP_SETUP
        + r"""

def test_fifty_percent_coupon():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    cart.apply_coupon(50)
    assert cart.total() == 54
""",
    ),
    Bug(
        file="shopcart/inventory.py",
        fixed="def low_stock(self, threshold: int = 5) -> list[str]:",
        buggy="def low_stock(self, threshold: int = 3) -> list[str]:",
        statement="""`Inventory.low_stock()` misses products that are running out. With only 3 pears left it returns an
empty list; by default everything with fewer than 5 units should be reported.""",
        test=_SHOP_SETUP
        + r"""

def test_low_stock_default_threshold():
    assert make_inventory().low_stock() == ["pear"]
""",
    ),
]

REPOS["intervals"] = {
    "README.md": "# intervals\n\nHalf-open numeric intervals and small calendar helpers on (year, month, day) tuples.\n",
    "pytest.ini": PYTEST_INI,
    "intervals/__init__.py": r'''"""Half-open intervals and calendar helpers."""
''',
    "intervals/interval.py": r'''"""Half-open numeric intervals [start, end)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Interval:
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"interval end {self.end} is before its start {self.start}")

    @property
    def length(self) -> float:
        return self.end - self.start

    def contains(self, point: float) -> bool:
        """True when `point` lies in [start, end)."""
        return self.start <= point < self.end

    def overlaps(self, other: Interval) -> bool:
        """True when the two intervals share at least one point."""
        return self.start < other.end and other.start < self.end

    def intersection(self, other: Interval) -> Interval | None:
        if not self.overlaps(other):
            return None
        return Interval(max(self.start, other.start), min(self.end, other.end))


def merge(intervals: list[Interval]) -> list[Interval]:
    """Merge overlapping or touching intervals into a sorted list of disjoint ones."""
    merged: list[Interval] = []
    for current in sorted(intervals):
        if merged and current.start <= merged[-1].end:
            last = merged.pop()
            merged.append(Interval(last.start, max(last.end, current.end)))
        else:
            merged.append(current)
    return merged


def total_covered(intervals: list[Interval]) -> float:
    """Total length covered by the intervals, counting overlaps once."""
    return sum(interval.length for interval in merge(intervals))
''',
    "intervals/dates.py": r'''"""Calendar helpers on (year, month, day) tuples of the Gregorian calendar."""

from __future__ import annotations

MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def is_leap_year(year: int) -> bool:
    """Every 4th year, except the centuries that are not divisible by 400."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    if month == 2 and is_leap_year(year):
        return 29
    return MONTH_DAYS[month - 1]


def day_of_year(year: int, month: int, day: int) -> int:
    """1 for January 1st, 365 or 366 for December 31st."""
    return sum(days_in_month(year, m) for m in range(1, month)) + day


def add_days(year: int, month: int, day: int, days: int) -> tuple[int, int, int]:
    """The date `days` (>= 0) days after the given one."""
    day += days
    while day > days_in_month(year, month):
        day -= days_in_month(year, month)
        month += 1
        if month > 12:
            month = 1
            year += 1
    return year, month, day


def weekday(year: int, month: int, day: int) -> str:
    """Name of the weekday of a date from 2000 on, counting days from 2000-01-01 (a Saturday)."""
    days = 0
    for y in range(2000, year):
        days += 366 if is_leap_year(y) else 365
    days += day_of_year(year, month, day) - 1
    return WEEKDAYS[(days + 5) % 7]
''',
    "tests/test_basic.py": r"""from intervals.dates import add_days, days_in_month, is_leap_year, weekday
from intervals.interval import Interval, merge


def test_length():
    assert Interval(2, 5).length == 3


def test_contains_start():
    assert Interval(0, 10).contains(0)


def test_merge_overlapping():
    assert merge([Interval(5, 8), Interval(1, 3), Interval(2, 4)]) == [Interval(1, 4), Interval(5, 8)]


def test_leap_years():
    assert is_leap_year(2024)
    assert not is_leap_year(2023)


def test_days_in_april():
    assert days_in_month(2023, 4) == 30


def test_add_days_within_month():
    assert add_days(2023, 3, 10, 5) == (2023, 3, 15)


def test_weekday_of_epoch():
    assert weekday(2000, 1, 1) == "Saturday"
""",
}

BUGS["intervals"] = [
    Bug(
        file="intervals/interval.py",
        fixed="return self.start <= point < self.end",
        buggy="return self.start <= point <= self.end",
        statement="""`Interval.contains()` treats the end point as inside the interval. `Interval(0, 10).contains(10)`
returns True, but intervals are documented as half-open [start, end).""",
        test=r"""from intervals.interval import Interval


def test_end_is_excluded():
    assert not Interval(0, 10).contains(10)
    assert Interval(0, 10).contains(9.5)
""",
    ),
    Bug(
        file="intervals/interval.py",
        fixed="return self.start < other.end and other.start < self.end",
        buggy="return self.start < other.end or other.start < self.end",
        statement="""Disjoint intervals are reported as overlapping. `Interval(0, 2).overlaps(Interval(5, 7))` is True,
and `intersection()` of the two then raises `ValueError: interval end 2 is before its start 5` instead of returning
None.""",
        test=r"""from intervals.interval import Interval


def test_disjoint_intervals_do_not_overlap():
    assert not Interval(0, 2).overlaps(Interval(5, 7))


def test_intersection_of_disjoint_is_none():
    assert Interval(0, 2).intersection(Interval(5, 7)) is None
""",
    ),
    Bug(
        file="intervals/dates.py",
        fixed="return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
        buggy="return year % 4 == 0 and year % 100 != 0",
        statement="""The year 2000 is not treated as a leap year: `is_leap_year(2000)` returns False and
`days_in_month(2000, 2)` returns 28. Years divisible by 400 are leap years.""",
        test=r"""from intervals.dates import days_in_month, is_leap_year


def test_year_divisible_by_400_is_leap():
    assert is_leap_year(2000)
    assert not is_leap_year(1900)
    assert days_in_month(2000, 2) == 29
""",
    ),
    Bug(
        file="intervals/dates.py",
        fixed="return MONTH_DAYS[month - 1]",
        buggy="return MONTH_DAYS[month]",
        statement="""`days_in_month()` is shifted by one month: January has 28 days, April 31, and
`days_in_month(2023, 12)` raises `IndexError: tuple index out of range`.""",
        test=r"""from intervals.dates import days_in_month


def test_month_lengths():
    assert days_in_month(2023, 1) == 31
    assert days_in_month(2023, 6) == 30


def test_december():
    assert days_in_month(2023, 12) == 31
""",
        breaks=("test_days_in_april",),
    ),
    Bug(
        file="intervals/dates.py",
        fixed="if month > 12:",
        buggy="if month >= 12:",
        statement="""`add_days()` skips December. `add_days(2023, 11, 30, 1)` returns `(2024, 1, 1)` instead of
`(2023, 12, 1)`.""",
        test=r"""from intervals.dates import add_days


def test_into_december():
    assert add_days(2023, 11, 30, 1) == (2023, 12, 1)
    assert add_days(2023, 11, 20, 20) == (2023, 12, 10)
""",
    ),
    Bug(
        file="intervals/dates.py",
        fixed="return sum(days_in_month(year, m) for m in range(1, month)) + day",
        buggy="return sum(days_in_month(year, m) for m in range(1, month + 1)) + day",
        statement="""`day_of_year()` counts the current month as if it were already over: `day_of_year(2023, 3, 1)`
returns 91 instead of 60. `weekday()` is wrong as a consequence.""",
        test=r"""from intervals.dates import day_of_year


def test_day_of_year():
    assert day_of_year(2023, 1, 1) == 1
    assert day_of_year(2023, 3, 1) == 60
""",
        breaks=("test_weekday_of_epoch",),
    ),
    Bug(
        file="intervals/dates.py",
        fixed="days += 366 if is_leap_year(y) else 365",
        buggy="days += 365 if is_leap_year(y) else 366",
        statement="""`weekday()` is wrong for dates after 2000. `weekday(2024, 3, 15)` returns "Wednesday", but that
day was a Friday.""",
        test=r"""from intervals.dates import weekday


def test_weekday_after_2000():
    assert weekday(2024, 3, 15) == "Friday"
    assert weekday(2001, 1, 1) == "Monday"
""",
    ),
    Bug(
        file="intervals/interval.py",
        fixed="if merged and current.start <= merged[-1].end:",
        buggy="if merged and current.start < merged[-1].end:",
        statement="""`merge()` does not join intervals that touch. `merge([Interval(1, 3), Interval(3, 5)])` returns both
intervals, but its docstring says touching intervals are merged into `[Interval(1, 5)]`.""",
        test=r"""from intervals.interval import Interval, merge


def test_touching_intervals_merge():
    assert merge([Interval(1, 3), Interval(3, 5)]) == [Interval(1, 5)]
""",
    ),
]

REPOS["minimark"] = {
    "README.md": "# minimark\n\nA tiny markdown-ish renderer: headings, bullet lists, code fences, paragraphs and inline markup.\n",
    "pytest.ini": PYTEST_INI,
    "minimark/__init__.py": r'''"""A tiny markdown-ish renderer."""
''',
    "minimark/escape.py": r'''"""HTML escaping and heading ids."""

from __future__ import annotations

# "&" must be replaced first, or the entities produced by the other replacements would be escaped again.
REPLACEMENTS = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"))


def escape_html(text: str) -> str:
    """Escape the characters that are special in HTML text and attribute values."""
    for char, entity in REPLACEMENTS:
        text = text.replace(char, entity)
    return text


def slugify(text: str) -> str:
    """Heading text -> an id: its lower-case words joined by "-"."""
    words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
    return "-".join(words)
''',
    "minimark/inline.py": r'''"""Inline markup: **bold**, *italic*, `code` and [links](url)."""

from __future__ import annotations

import re

from minimark.escape import escape_html

CODE_RE = re.compile(r"`([^`]+)`")
BOLD_RE = re.compile(r"\*\*(.+?)\*\*")
ITALIC_RE = re.compile(r"\*(.+?)\*")
LINK_RE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def render_inline(text: str) -> str:
    """Render the inline markup of one line of text to HTML; code spans are taken literally."""
    pieces = CODE_RE.split(text)
    out = []
    for index, piece in enumerate(pieces):
        if index % 2 == 1:
            out.append(f"<code>{escape_html(piece)}</code>")
        else:
            out.append(_render_plain(piece))
    return "".join(out)


def _render_plain(text: str) -> str:
    text = escape_html(text)
    text = LINK_RE.sub(r'<a href="\2">\1</a>', text)
    text = BOLD_RE.sub(r"<strong>\1</strong>", text)
    text = ITALIC_RE.sub(r"<em>\1</em>", text)
    return text
''',
    "minimark/blocks.py": r'''"""Block structure: headings, bullet lists, code fences and paragraphs."""

from __future__ import annotations

from minimark.escape import escape_html, slugify
from minimark.inline import render_inline

FENCE = "```"
MAX_HEADING_LEVEL = 6


def heading_level(line: str) -> int:
    """The number of leading "#" of a heading line ("# Title" -> 1); 0 when the line is no heading."""
    stripped = line.lstrip("#")
    level = len(line) - len(stripped)
    if 1 <= level <= MAX_HEADING_LEVEL and stripped.startswith(" "):
        return level
    return 0


def _code_block(lines: list[str]) -> str:
    return "<pre><code>" + escape_html("\n".join(lines)) + "</code></pre>"


def render(source: str) -> str:
    """Render a whole document to HTML, one block per output line."""
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if paragraph:
            out.append("<p>" + render_inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{render_inline(item)}</li>" for item in items) + "</ul>")
            items.clear()

    for line in source.splitlines():
        if code is not None:
            if line.strip() == FENCE:
                out.append(_code_block(code))
                code = None
            else:
                code.append(line)
            continue
        level = heading_level(line)
        if line.strip() == FENCE:
            flush()
            code = []
        elif level:
            flush()
            title = line[level:].strip()
            out.append(f'<h{level} id="{slugify(title)}">{render_inline(title)}</h{level}>')
        elif line.startswith(("- ", "* ")):
            if paragraph:
                flush()
            items.append(line[2:].strip())
        elif not line.strip():
            flush()
        else:
            if items:
                flush()
            paragraph.append(line.strip())
    flush()
    if code is not None:
        out.append(_code_block(code))
    return "\n".join(out)
''',
    "tests/test_basic.py": r"""from minimark.blocks import render
from minimark.escape import escape_html
from minimark.inline import render_inline


def test_paragraph():
    assert render("hello\nworld") == "<p>hello world</p>"


def test_heading():
    assert render("# Title") == '<h1 id="title">Title</h1>'


def test_bold():
    assert render_inline("a **b** c") == "a <strong>b</strong> c"


def test_code_span():
    assert render_inline("use `x < y`") == "use <code>x &lt; y</code>"


def test_list():
    assert render("- one\n- two") == "<ul><li>one</li><li>two</li></ul>"


def test_escape_ampersand():
    assert escape_html("a & b") == "a &amp; b"
""",
}

BUGS["minimark"] = [
    Bug(
        file="minimark/escape.py",
        fixed='REPLACEMENTS = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), (\'"\', "&quot;"))',
        buggy='REPLACEMENTS = (("<", "&lt;"), (">", "&gt;"), ("&", "&amp;"), (\'"\', "&quot;"))',
        statement="""Angle brackets are escaped twice. `escape_html("<b>")` returns "&amp;lt;b&amp;gt;", so the browser
shows "&lt;b&gt;" instead of "<b>".""",
        test=r"""from minimark.escape import escape_html


def test_brackets_escaped_once():
    assert escape_html("<b>") == "&lt;b&gt;"
    assert escape_html("a < b & c") == "a &lt; b &amp; c"
""",
        breaks=("test_code_span",),
    ),
    Bug(
        file="minimark/blocks.py",
        fixed='if 1 <= level <= MAX_HEADING_LEVEL and stripped.startswith(" "):',
        buggy='if 1 <= level < MAX_HEADING_LEVEL and stripped.startswith(" "):',
        statement="""Level-6 headings are not recognized. `render("###### Small")` produces a paragraph
`<p>###### Small</p>` instead of `<h6 id="small">Small</h6>`; levels 1 to 5 work.""",
        test=r"""from minimark.blocks import render


def test_level_six_heading():
    assert render("###### Small") == '<h6 id="small">Small</h6>'
""",
    ),
    Bug(
        file="minimark/escape.py",
        fixed='return "-".join(words)',
        buggy='return "_".join(words)',
        statement="""Heading ids use underscores. `render("## Getting Started")` gives the heading the id
"getting_started", which breaks our existing links to "#getting-started".""",
        test=r"""from minimark.blocks import render


def test_heading_id_uses_dashes():
    assert render("## Getting Started") == '<h2 id="getting-started">Getting Started</h2>'
""",
    ),
    Bug(
        file="minimark/inline.py",
        fixed='ITALIC_RE = re.compile(r"\\*(.+?)\\*")',
        buggy='ITALIC_RE = re.compile(r"\\*(.+)\\*")',
        statement="""Two italic words on one line become one long italic span. `render_inline("*a* and *b*")` returns
"<em>a* and *b</em>" instead of "<em>a</em> and <em>b</em>".""",
        test=r"""from minimark.inline import render_inline


def test_two_italic_spans():
    assert render_inline("*a* and *b*") == "<em>a</em> and <em>b</em>"
""",
    ),
    Bug(
        file="minimark/inline.py",
        fixed="text = LINK_RE.sub(r'<a href=\"\\2\">\\1</a>', text)",
        buggy="text = LINK_RE.sub(r'<a href=\"\\1\">\\2</a>', text)",
        statement="""Links come out backwards: `render_inline("see [docs](http://x.org)")` returns
'see <a href="docs">http://x.org</a>', with the URL as the text and the text as the target.""",
        test=r"""from minimark.inline import render_inline


def test_link_target_and_text():
    assert render_inline("see [docs](http://x.org)") == 'see <a href="http://x.org">docs</a>'
""",
    ),
    Bug(
        file="minimark/blocks.py",
        fixed='elif line.startswith(("- ", "* ")):',
        buggy='elif line.startswith("- "):',
        statement="""Bullet lists written with "*" are not rendered as lists. `render("* one\\n* two")` returns a
paragraph with italics in it instead of `<ul><li>one</li><li>two</li></ul>`; lists with "-" work.""",
        test=r"""from minimark.blocks import render


def test_star_bullets():
    assert render("* one\n* two") == "<ul><li>one</li><li>two</li></ul>"
""",
    ),
    Bug(
        file="minimark/blocks.py",
        fixed='return "<pre><code>" + escape_html("\\n".join(lines)) + "</code></pre>"',
        buggy='return "<pre><code>" + escape_html(" ".join(lines)) + "</code></pre>"',
        statement="""Code blocks lose their line breaks. A fenced block with the lines "a = 1" and "b = 2" renders as
`<pre><code>a = 1 b = 2</code></pre>`, all on one line.""",
        test=r"""from minimark.blocks import render


def test_code_block_keeps_lines():
    assert render("```\na = 1\nb = 2\n```") == "<pre><code>a = 1\nb = 2</code></pre>"
""",
    ),
    Bug(
        file="minimark/blocks.py",
        fixed='stripped = line.lstrip("#")',
        buggy='stripped = line.strip("#")',
        statement="""A heading that ends with "#" gets the wrong level. `render("# Learn C#")` returns an `<h2>` heading
instead of `<h1 id="learn-c">Learn C#</h1>`.""",
        test=r"""from minimark.blocks import render


def test_heading_ending_with_hash():
    assert render("# Learn C#") == '<h1 id="learn-c">Learn C#</h1>'
""",
    ),
]


if __name__ == "__main__":
    sys.exit(main())
