"""The offline toy repo-repair suite (examples/code_repair/toy_suite.py): deterministic build, every task verified,
and single-commit shallow fetches of task commits."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import toy_suite


def git(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run git as a consumer would (no user config), returning stdout; fail the test on an error."""
    proc = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=toy_suite.git_env(), timeout=120
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> list[dict]:
    return toy_suite.build(tmp_path_factory.mktemp("toy-suite"))


def test_build_is_deterministic(tmp_path):
    first = toy_suite.build(tmp_path / "a")
    again = toy_suite.build(tmp_path / "a")  # rebuilding in place
    other = toy_suite.build(tmp_path / "b")
    assert len(first) >= 30
    assert first == again
    without_repo = [[{k: v for k, v in row.items() if k != "repo"} for row in rows] for rows in (first, other)]
    assert without_repo[0] == without_repo[1]
    assert [row["base_commit"] for row in first] == [row["base_commit"] for row in other]
    assert len({row["repo"] for row in first}) >= 5
    assert Counter(row["split"] for row in first) == {"train": 30, "test": 10}
    assert len({row["instance_id"] for row in first}) == len(first)
    for row in first:
        assert set(row) == set(toy_suite.ROW_KEYS)
        assert all(row[key] for key in toy_suite.ROW_KEYS), row["instance_id"]
        assert Path(row["repo"]).is_absolute() and (Path(row["repo"]) / ".git").is_dir()
        assert row["problem_statement"].splitlines()[-1].startswith("Hint: in ")
        assert row["patch"].startswith("diff --git a/") and row["test_patch"].startswith("diff --git a/tests/test_")
    lines = (tmp_path / "a" / "tasks.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == first
    assert lines[0] == json.dumps(first[0], sort_keys=True)
    repo = Path(first[0]["repo"])  # the work tree stays on the clean main branch
    assert git("symbolic-ref", "HEAD", cwd=repo).strip() == "refs/heads/main"
    assert git("status", "--porcelain", cwd=repo) == ""


def test_verify_whole_suite(suite):
    toy_suite.verify(suite)


def test_verify_reports_a_wrong_task(suite):
    passing = suite[0]["PASS_TO_PASS"]
    row = dict(suite[0], FAIL_TO_PASS=passing[:1], PASS_TO_PASS=passing[1:])  # a test that does not fail on the bug
    with pytest.raises(AssertionError, match=row["instance_id"]):
        toy_suite.verify([row])


def test_single_commit_shallow_fetch(suite, tmp_path):
    for row in [row for row in suite if row["split"] == "test"]:
        work = tmp_path / row["instance_id"]
        git("init", "-q", str(work))
        git("fetch", "-q", "--depth", "1", f"file://{row['repo']}", row["base_commit"], cwd=work)
        git("checkout", "-q", "FETCH_HEAD", cwd=work)
        assert git("rev-parse", "HEAD", cwd=work).strip() == row["base_commit"]
        assert git("rev-list", "--count", "HEAD", cwd=work).strip() == "1"
        path = row["patch"].split("\n", 1)[0].split(" b/", 1)[1]
        buggy = git("show", f"{row['base_commit']}:{path}", cwd=row["repo"])
        assert (work / path).read_text() == buggy
        git("apply", "-", cwd=work, stdin=row["patch"])
        assert (work / path).read_text() == git("show", f"main:{path}", cwd=row["repo"])
