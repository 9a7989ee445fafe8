"""The example coding agent for real: the scripted expert (test double) drives it through real workspaces of every
toy task and solves each; the tests-pass reward runs the real tests; the agent survives the random tiny model's
garbage through the real gateway, ending every episode within its limits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from code_repair import rewards, toy_suite
from code_repair.agent import STOP_REASONS, AgentConfig, RepairAgent, command_types
from code_repair.data import Workspaces, command_env, load_tasks, repo_url
from code_repair.scripted_model import ScriptedModel, expert_edits, patch_edits
from trl.agents import ServerClient
from trl.agents.testing.servers import API_TOKEN


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "code_repair"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    toy_suite.build(out)
    return out


@pytest.fixture(scope="module")
def tasks(suite):
    return load_tasks(suite)


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    # the toy suite's command environment, as `TaskConfig.workspaces()` gives it (pytest without plugin autoload)
    return Workspaces(tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("work"), env=command_env("toy"))


def test_load_tasks_checks_columns_and_adds_unique_prompts(tasks, tmp_path):
    assert len(tasks) >= 30 and len(set(tasks["repo"])) >= 5
    assert len({json.dumps(p) for p in tasks["prompt"]}) == len(tasks)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instance_id": "x", "repo": "a/b"}) + "\n")
    with pytest.raises(ValueError, match="missing .*base_commit"):
        load_tasks(bad)
    assert repo_url("owner/name") == "https://github.com/owner/name.git"
    with pytest.raises(ValueError, match="neither a URL"):
        repo_url("not a repo")


def test_workspaces_fetch_one_commit_once_and_copy_per_episode(tasks, workspaces):
    row = tasks[0]
    first, second = workspaces.checkout(row), workspaces.checkout(row)
    assert first != second
    head = subprocess.run(["git", "-C", str(first), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert head.strip() == row["base_commit"]
    shallow = subprocess.run(["git", "-C", str(first), "rev-list", "--count", "HEAD"], capture_output=True, text=True)
    assert shallow.stdout.strip() == "1"  # a single-commit shallow fetch
    (first / "scratch.txt").write_text("episode 1 only")
    assert not (second / "scratch.txt").exists()  # copies are independent
    assert workspaces.source(row["repo"], row["base_commit"]).exists()
    with pytest.raises(ValueError, match="not a commit hash"):
        workspaces.source(row["repo"], "main; rm -rf /")


def test_scripted_expert_solves_every_toy_task_through_the_real_agent(tasks, workspaces):
    rows = list(tasks)
    config = AgentConfig(tool_limit=12, time_limit=120)
    with ScriptedModel(rows) as model:
        agent = RepairAgent(workspaces, config)

        def episode(row):
            return agent(row, model.base_url)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(episode, rows))
    for row, result in zip(rows, results, strict=True):
        assert result["stop_reason"] == "submitted", row["instance_id"]
        assert rewards.exact_patch_match(result["generated_diff"], row["patch"]), row["instance_id"]
        edits = expert_edits(row["problem_statement"], row["patch"])
        assert result["tool_calls_apply_patch"] == result["tool_success_apply_patch"] == len(edits) == 1
        assert result["shell_cmd_grep"] == 1 and result["shell_cmd_python"] == 1
    diffs = [r["generated_diff"] for r in results]
    similarity = rewards.diff_similarity_reward([[]] * len(rows), diffs, [r["patch"] for r in rows])
    assert min(similarity) > 0.95
    tests_pass = rewards.TestsPassReward(workspaces, seconds=60)
    columns = {k: tasks[k] for k in tasks.column_names if k not in ("repo", "base_commit")}
    scores = tests_pass([[]] * len(rows), diffs, tasks["repo"], tasks["base_commit"], **columns)
    assert scores == [1.0] * len(rows)


def test_scripted_expert_without_hints_patches_hunk_by_hunk(tasks, workspaces):
    """Rows without the toy hint (as on SWE-Gym): the expert applies the oracle's hunks with their context."""
    rows = [{**row, "problem_statement": row["problem_statement"].split("\n\nHint:")[0]} for row in list(tasks)[::8]]
    with ScriptedModel(rows) as model:
        agent = RepairAgent(workspaces, AgentConfig(tool_limit=12))
        for row in rows:
            result = agent(row, model.base_url)
            assert result["stop_reason"] == "submitted"
            assert result["tool_success_apply_patch"] == len(patch_edits(row["patch"]))
            assert rewards.exact_patch_match(result["generated_diff"], row["patch"])


def test_tests_pass_reward_is_zero_on_the_unpatched_repo_and_when_tests_are_edited(tasks, workspaces):
    rows = list(tasks)
    tests_pass = rewards.TestsPassReward(workspaces, seconds=60)
    unrelated = (
        "diff --git a/NOTES.md b/NOTES.md\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+x\n"
    )
    # every task: the tests run (the unrelated diff applies) and fail, because the bug is still there
    columns = {k: tasks[k] for k in ("test_patch", "FAIL_TO_PASS", "PASS_TO_PASS", "test_command")}
    scores = tests_pass([[]] * len(rows), [unrelated] * len(rows), tasks["repo"], tasks["base_commit"], **columns)
    assert scores == [0.0] * len(rows)
    row = rows[0]
    assert tests_pass.score(row, None) == tests_pass.score(row, "not a diff") == 0.0
    assert tests_pass.score(row, row["patch"]) == 1.0
    # an agent that "fixes" the bug by rewriting the hidden test file gets nothing for it
    test_file = next(iter(rewards.split_diff_by_file(row["test_patch"])))
    cheat = (
        f"diff --git a/{test_file} b/{test_file}\nnew file mode 100644\n--- /dev/null\n+++ b/{test_file}\n"
        "@@ -0,0 +1,2 @@\n+def test_nothing():\n+    pass\n"
    )
    assert tests_pass.score(row, cheat) == 0.0


def test_command_types_counts_pipelines():
    assert command_types("ls -la; cat a | grep x && sed -n 1p f || frob") == ["ls", "cat", "grep", "sed", "other"]


# Forced turns (structured output) that try to break the agent: runaway output, a hanging command, an escape, an
# unknown tool, arguments of the wrong type; and free generation, where the random model writes garbage.
BAD_CALLS = [
    {"name": "shell", "arguments": {"command": "yes"}},
    {"name": "shell", "arguments": {"command": "sleep 100"}},
    {"name": "apply_patch", "arguments": {"file": "../../etc/hosts", "search": "", "replace": "x"}},
    {"name": "rm_rf", "arguments": {"path": "/"}},
    {"name": "shell", "arguments": {"command": 42}},
]


def forced(call: dict) -> dict:
    turn = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    return {"structured_outputs": {"regex": re.escape(turn)}}


@pytest.fixture(scope="module")
def client(gateway):
    with ServerClient(gateway.url, api_token=API_TOKEN, timeout=120) as client:
        yield client


def test_agent_against_the_random_model_ends_every_episode_within_its_limits(
    client, tiny_model_dir, tasks, workspaces
):
    limits = dict(tool_limit=5, token_limit=400, time_limit=60.0, response_limit=64, command_seconds=2.0)
    # forced turns need room: under the regex the random model may spell the call in many small tokens
    roomy = {**limits, "token_limit": 2000, "response_limit": 300}
    configs = [AgentConfig(model=tiny_model_dir, **roomy, extra_body=forced(call)) for call in BAD_CALLS]
    configs += [AgentConfig(model=tiny_model_dir, **limits) for _ in range(3)]  # free garbage
    configs.append(
        AgentConfig(model=tiny_model_dir, **{**limits, "response_limit": 4000, "token_limit": 8000})
    )  # overflows the context
    rows = list(tasks)[: len(configs)]

    def episode(i):
        result = RepairAgent(workspaces, configs[i], request_timeout=60).episode(
            rows[i], client.session_url(f"garbage-{i}")
        )
        return result.reward_kwargs(), result

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(episode, range(len(configs))))
    for i, (returned, result) in enumerate(outcomes):
        cfg = configs[i]
        assert result.stop_reason in STOP_REASONS and returned["stop_reason"] == result.stop_reason
        assert result.completion_tokens <= cfg.token_limit and len(result.tool_log) <= cfg.tool_limit
        assert result.seconds <= cfg.time_limit + cfg.command_seconds + 30
        for message in result.messages:
            if message["role"] == "tool":
                assert len(message["content"]) <= cfg.output_chars + 200  # truncated, with a note
        trajectory = client.trajectory(f"garbage-{i}")
        assert sum(len(s["turns"]) for s in trajectory["segments"]) == result.turns
        client.close_session(f"garbage-{i}")
    summary = [(r.stop_reason, len(r.tool_log), r.turns, r.error[:80]) for _, r in outcomes]
    print(summary)
    by_call = {c["name"] + json.dumps(c["arguments"]): r for c, (_, r) in zip(BAD_CALLS, outcomes, strict=False)}
    flood, hang, escape, unknown, wrong_type = by_call.values()
    assert all(r.tool_log for r in by_call.values()), summary
    assert "[command killed: it printed more than the output limit]" in flood.tool_log[0].output
    assert "[output truncated" in flood.tool_log[0].output
    assert "ran past" in hang.tool_log[0].output
    assert "'..' is not allowed" in escape.tool_log[0].output and not escape.tool_log[0].ok
    assert "unknown tool 'rm_rf'" in unknown.tool_log[0].output
    assert "non-empty string" in wrong_type.tool_log[0].output
    # every forced call was answered until the tool limit stopped the episode (the floods fill the 4k context first)
    for result in (hang, escape, unknown, wrong_type):
        assert result.stop_reason == "tool_limit" and len(result.tool_log) == 5, summary
        assert "No tool calls left" in result.messages[-1]["content"]
    assert flood.stop_reason in ("tool_limit", "context_exhausted")
    overflow = outcomes[-1][1]
    assert overflow.stop_reason == "context_exhausted" and "context" in overflow.error.lower()


def test_seeded_episodes_repeat_and_unseeded_ones_vary(client, tiny_model_dir, tasks, workspaces):
    """The demo's paired evaluation: an episode seeded the same way samples the same replies, through the gateway."""
    config = AgentConfig(model=tiny_model_dir, tool_limit=3, token_limit=120, response_limit=40, temperature=1.3)
    agent = RepairAgent(workspaces, config, request_timeout=60)
    row = list(tasks)[0]

    def replies(sid, seed):
        result = agent.episode(row, client.session_url(sid), seed=seed)
        client.close_session(sid)
        return [json.dumps(m, sort_keys=True) for m in result.messages if m["role"] == "assistant"]

    first, again, other = replies("seeded-a", 7), replies("seeded-b", 7), replies("seeded-c", 8)
    assert first and first == again
    assert other != first


def test_agent_command_line(suite, tasks, tmp_path):
    row = tasks[0]
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", row["repo"], str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", row["base_commit"]], check=True)
    with ScriptedModel([row]) as model:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "agent.py"), row["problem_statement"], "--repo", str(repo),
             "--base-url", model.base_url, "--log", str(tmp_path / "log.json")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert rewards.exact_patch_match(result.stdout, row["patch"])
    assert "stopped: submitted" in result.stderr
    log = json.loads((tmp_path / "log.json").read_text())
    assert [c["tool"] for c in log["tool_log"]][:2] == ["shell", "apply_patch"]
    bad = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent.py"), "x", "--repo", str(tmp_path)], capture_output=True
    )
    assert bad.returncode == 2 and b"not a git repository" in bad.stderr


def test_module_doctests():
    import doctest

    from code_repair import agent, scripted_model

    for module in (agent, scripted_model, rewards):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted >= 1, module.__name__


def test_openai_errors_are_not_swallowed(tasks, workspaces):
    """A server that is down is not "garbage output": the episode raises (AgentRollout counts it as agent_error)."""
    agent = RepairAgent(workspaces, AgentConfig(model="m"), request_timeout=5)
    with pytest.raises(openai.APIConnectionError):
        agent(tasks[0], "http://127.0.0.1:9/v1")
