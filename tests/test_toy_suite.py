"""The offline toy repo-repair suite (examples/code_repair/toy_suite.py, data in examples/code_repair/toy_data/):
deterministic build with pinned commit hashes, every task verified, the clean repositories pass their own tests, and
single-commit shallow fetches of task commits."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from code_repair import toy_suite


def git(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run git as a consumer would (no user config), returning stdout; fail the test on an error."""
    proc = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=toy_suite.git_env(), timeout=120
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


PINNED = Path(__file__).parent / "data" / "toy_suite_hashes.json"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> list[dict]:
    return toy_suite.build(tmp_path_factory.mktemp("toy-suite"))


def fingerprint(rows: list[dict]) -> dict:
    """Each repository's clean commit; each task's buggy commit and a hash of its row but for the local `repo` path."""
    repos = {
        Path(repo).name: git("rev-parse", "main", cwd=repo).strip() for repo in dict.fromkeys(r["repo"] for r in rows)
    }
    tasks = {}
    for row in rows:
        fields = json.dumps({key: value for key, value in row.items() if key != "repo"}, sort_keys=True)
        tasks[row["instance_id"]] = {
            "base_commit": row["base_commit"],
            "row_sha256": hashlib.sha256(fields.encode()).hexdigest(),
        }
    return {"repos": repos, "tasks": tasks}


def test_build_matches_pinned_hashes(suite):
    """Any byte of the toy data, or any change to how it is committed, changes a hash here. When the change is
    deliberate, write the printed values into tests/data/toy_suite_hashes.json (and consider bumping toy_suite.VERSION:
    caches built before keep the old repositories)."""
    pinned = json.loads(PINNED.read_text())
    actual = fingerprint(suite)
    new = json.dumps(actual, indent=2)
    assert actual == pinned and list(actual["tasks"]) == list(pinned["tasks"]), f"the toy suite changed; now:\n{new}"


@pytest.mark.parametrize("name", toy_suite.repo_names())
def test_clean_repo_passes_its_own_tests(name, tmp_path):
    """Each repository of toy_data/repos/, as is, passes all its tests, run the way the suite runs them."""
    work = tmp_path / name
    shutil.copytree(toy_suite.DATA / "repos" / name, work, ignore=shutil.ignore_patterns(*toy_suite.SKIPPED))
    outcomes, output = toy_suite.run_pytest(work, toy_suite.TEST_COMMAND, [], tmp_path / "report.xml")
    tests = re.findall(r"^def (test_\w+)\(", (work / "tests" / "test_basic.py").read_text(), flags=re.M)
    assert outcomes == {f"tests/test_basic.py::{test}": "passed" for test in tests}, output


def test_data_is_checked_when_loaded(tmp_path, monkeypatch):
    """CRLF line endings and a task whose `fail_to_pass` does not match its test file fail loudly; the names the
    data had in the module still answer (`REPOS`, `BUGS`) or say where it went (`PYTEST_INI`)."""
    assert toy_suite.REPOS["calc"]["pytest.ini"] == (toy_suite.DATA / "repos/calc/pytest.ini").read_text()
    assert toy_suite.BUGS["calc"][0].fixed == "return left - right"
    with pytest.raises(AttributeError, match="pytest.ini"):
        toy_suite.PYTEST_INI  # noqa: B018
    data = tmp_path / "toy_data"
    shutil.copytree(toy_suite.DATA, data)
    monkeypatch.setattr(toy_suite, "DATA", data)
    readme = data / "repos" / "calc" / "README.md"
    readme.write_bytes(readme.read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(ValueError, match="CR line endings"):
        toy_suite.repo_files("calc")
    spec = json.loads((data / "tasks.json").read_text())
    spec["calc"][0]["fail_to_pass"] = ["test_other"]
    (data / "tasks.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="calc task 1: fail_to_pass"):
        toy_suite.load_bugs()


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
