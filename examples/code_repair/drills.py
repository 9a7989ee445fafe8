"""Copy drills: synthetic one-line repair tasks that teach a tiny model the toy suite's protocol, not its answers.

The toy suite has 30 training tasks: too few for a randomly initialised model to learn to *copy* the hint's file and
lines into its tool calls rather than memorise 30 answers. Each drill is a real one-file git repository holding a
window of a CPython standard-library module (never the toy repositories) with one line mutated (an operator, a
comparison, a constant, a builtin swapped), a problem statement in the toy suite's hint format, and the oracle
patch. The scripted expert solves drills through the real agent like toy tasks; `demo.py` adds their trajectories to
the SFT data. Drills have no tests (`test_command` is `true`). Deterministic for a given seed.

Usage: `rows = drills.build(out_dir, count=300, seed=0)`.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sysconfig
from pathlib import Path

from toy_suite import git_env


SOURCES = ["textwrap.py", "shutil.py", "argparse.py", "difflib.py", "tempfile.py", "pathlib.py", "string.py",
           "calendar.py", "fractions.py", "statistics.py", "heapq.py", "bisect.py", "csv.py", "glob.py"]  # fmt: skip
SWAPS = [(" + ", " - "), (" - ", " + "), (" < ", " <= "), (" > ", " >= "), (" == ", " != "), (" != ", " == "),
         ("True", "False"), ("False", "True"), (" and ", " or "), (" or ", " and "), ("min(", "max("),
         ("max(", "min("), (" is not ", " is "), ("[0]", "[1]"), ("[-1]", "[0]"), (" * ", " // ")]  # fmt: skip
STATEMENTS = [
    "A function in {file} gives wrong results since the last change.",
    "Something in {file} is broken: callers get the wrong answer.",
    "Users report a regression coming from {file}.",
    "The behaviour of {file} changed by mistake in one line.",
]


def _candidates(text: str) -> list[tuple[int, str, str]]:
    """(line number, line, mutated line) for lines with one applicable swap."""
    out = []
    for number, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if not 12 <= len(stripped) <= 70 or stripped.startswith(("#", '"', "'")) or "`" in stripped:
            continue
        for old, new in SWAPS:
            if stripped.count(old) == 1:
                out.append((number, line, line.replace(old, new)))
                break
    return out


def build(out_dir: str | Path, count: int = 300, seed: int = 0) -> list[dict]:
    """Create `count` drill repositories under `out_dir` and return their task rows (also in `out_dir/drills.jsonl`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = {name: (stdlib / name).read_text(encoding="utf-8") for name in SOURCES if (stdlib / name).is_file()}
    rows = []
    while len(rows) < count:
        name = rng.choice(sorted(modules))
        lines = modules[name].splitlines()
        start = rng.randrange(0, max(len(lines) - 40, 1))
        window = lines[start : start + 40]
        choices = _candidates("\n".join(window))
        if not choices:
            continue
        number, fixed, buggy = rng.choice(choices)
        buggy_text = "\n".join(window[:number] + [buggy] + window[number + 1 :]) + "\n"
        if buggy_text.count(buggy.strip()) != 1 or "\n".join(window).count(fixed.strip()) != 1:
            continue
        instance = f"drill-{len(rows):04d}"
        file = f"{rng.choice(['lib', 'src', 'pkg', 'core'])}/{name.replace('.py', '')}_{len(rows) % 7}.py"
        repo = out / instance
        fixed_text = "\n".join(window) + "\n"
        commit, patch = _repository(repo, file, buggy_text, fixed_text)
        statement = rng.choice(STATEMENTS).format(file=file)
        hint = f"Hint: in {file} the line `{buggy.strip()}` is wrong; it should be `{fixed.strip()}`."
        rows.append({"instance_id": instance, "repo": str(repo), "base_commit": commit, "patch": patch,
                     "problem_statement": f"{statement}\n\n{hint}", "test_command": "true", "split": "drill"})  # fmt: skip
    (out / "drills.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


def _repository(repo: Path, file: str, buggy: str, fixed: str) -> tuple[str, str]:
    """A one-commit repository with the buggy file; returns the commit and the fixing patch."""
    env = git_env()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    (repo / file).parent.mkdir(parents=True, exist_ok=True)
    (repo / file).write_text(buggy)
    git("init", "-q", "-b", "main")
    git("config", "uploadpack.allowAnySHA1InWant", "true")
    git("add", "-A")
    git("commit", "-q", "-m", "drill")
    commit = git("rev-parse", "HEAD").strip()
    (repo / file).write_text(fixed)
    patch = git("diff")
    git("checkout", "-q", "--", file)
    return commit, re.sub(r"\n*\Z", "\n", patch)
