"""The typed trajectory (`trl.agents.trajectory`) against a recorded gateway answer: the JSON on the wire round-trips
byte for byte, bad input names its field, and the gateway, the journal, masking, the collator and the rollout hooks
all read and write the same thing.

`data/trajectory.json` is the body of a real `GET /sessions/fixture-0/trajectory` (the gateway on the tiny model,
one CPU replica; two forced tool-calling turns, then a rewritten history, so two segments), recorded before the
trajectory had types: `python -m tests.test_trajectory MODEL_DIR` records a new one the same way.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from starlette.responses import JSONResponse

from trl.agents import AgentRollout, DataCollatorForAgentTrajectories, ReplayRollout, Trajectory
from trl.agents import journal as journal_file
from trl.agents.journal import JournalError
from trl.agents.masking import MaskedTokens
from trl.agents.server.sessions import Segment, Session, SessionStore


FIXTURE = Path(__file__).parent / "data" / "trajectory.json"


@pytest.fixture
def wire() -> bytes:
    return FIXTURE.read_bytes()


@pytest.fixture
def answer(wire) -> dict:
    return json.loads(wire)


def session_of(trajectory: Trajectory) -> Session:
    """A gateway session holding `trajectory`'s recording."""
    segments = [Segment(s.tokens, s.turns, [f"message {i}"]) for i, s in enumerate(trajectory.segments)]
    return Session(trajectory.session_id, trajectory.replica, segments, trajectory.forks)


def test_the_recorded_answer_round_trips_byte_for_byte(wire, answer):
    trajectory = Trajectory.from_json(answer)
    assert json.dumps(trajectory.to_json()) == json.dumps(answer)
    assert JSONResponse(trajectory.to_json()).body == wire  # rendered as the gateway's route renders it
    assert JSONResponse(session_of(trajectory).trajectory().to_json()).body == wire  # and from a gateway session
    assert (trajectory.session_id, trajectory.replica, trajectory.forks) == ("fixture-0", "replica-0", 1)
    first, last = trajectory.segments
    assert [t.tool_calls for t in trajectory.turns] == [["shell"], ["shell"], []]
    assert first.prompt_length == first.turns[0].prompt_tokens and last.turns[0].finish_reason == "length"
    assert last.tokens.num_sampled == last.turns[0].completion_tokens


def test_the_journal_keeps_the_trajectory(answer, tmp_path):
    store = SessionStore(tmp_path)
    recorded = Trajectory.from_json(answer)
    session = store.create(recorded.session_id, recorded.replica)
    for segment in session_of(recorded).segments:
        session.start_segment()
        session.current.tokens.add_context(segment.tokens.token_ids[: segment.prompt_length])
        store.save(session)  # a turn journaled in two lines: what the request added, then the rest
        session.current.tokens = segment.tokens
        session.current.turns, session.current.messages = segment.turns, segment.messages
        store.save(session)
    (reread,) = journal_file.read_folder(tmp_path)
    assert reread.trajectory.to_json() == answer and reread.messages == [["message 0"], ["message 1"]]
    assert SessionStore(tmp_path).get("fixture-0").trajectory().to_json() == answer
    (record,) = ReplayRollout(tmp_path, match="order").records
    assert record["trajectory"].to_json() == answer

    lines = (tmp_path / "fixture-0.jsonl").read_text().splitlines()
    damaged = json.loads(lines[2])
    damaged["mask"].pop()
    (tmp_path / "fixture-0.jsonl").write_text("\n".join([*lines[:2], json.dumps(damaged), *lines[3:]]) + "\n")
    with pytest.raises(JournalError, match=r"fixture-0.jsonl, line 3, is damaged: record.mask has 144 entries"):
        journal_file.read(tmp_path / "fixture-0.jsonl")


def mutate(answer: dict, path: str, value) -> dict:
    """A deep copy of `answer` with the item at `path` (keys and indexes separated by dots) replaced or removed."""
    data = copy.deepcopy(answer)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = data
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("segments.0.mask.5", DELETE, r"trajectory.segments\[0\].mask has 368 entries but token_ids has 369"),
        ("segments.1.logprobs.0", DELETE, r"trajectory.segments\[1\].logprobs has 239 entries"),
        ("segments.0.mask.5", 2, r"trajectory.segments\[0\].mask\[5\] must be 0 or 1, not 2"),
        ("segments.0.mask.5", False, r"trajectory.segments\[0\].mask\[5\] must be 0 or 1, not False"),
        ("segments.1.token_ids.3", "x", r"trajectory.segments\[1\].token_ids\[3\] must be a token id"),
        ("segments.1.logprobs.235", "x", r"trajectory.segments\[1\].logprobs\[235\] must be a number or null"),
        ("segments.0.prompt_length", 3, r"trajectory.segments\[0\].prompt_length is 3 but .* at 224"),
        (
            "segments.0.turns.1.policy_version",
            DELETE,
            r"trajectory.segments\[0\].turns\[1\].policy_version is missing",
        ),
        ("segments.0.turns.0.tool_calls", [1], r"trajectory.segments\[0\].turns\[0\].tool_calls\[0\] must be a tool"),
        ("segments.0.turns.0.seconds", "1s", r"trajectory.segments\[0\].turns\[0\].seconds must be a number"),
        ("segments.0.turns", {}, r"trajectory.segments\[0\].turns must be a list, not \{\}"),
        ("segments.1", [], r"trajectory.segments\[1\] must be a JSON object, not list"),
        ("segments", DELETE, r"trajectory.segments is missing"),
        ("forks", -1, r"trajectory.forks must be a non-negative integer, not -1"),
        ("session_id", 7, r"trajectory.session_id must be a string or null, not 7"),
    ],
)
def test_malformed_trajectories_name_the_bad_field(answer, path, value, message):
    with pytest.raises(ValueError, match=message):
        Trajectory.from_json(mutate(answer, path, value))


def test_what_older_or_hand_written_files_leave_out_is_filled_in():
    trajectory = Trajectory.from_json({"segments": [{"token_ids": [5, 6, 7], "mask": [0, 1, 1], "logprobs": None}]})
    assert trajectory.to_json() == {
        "session_id": None,
        "replica": None,
        "forks": 0,
        "segments": [
            {"token_ids": [5, 6, 7], "mask": [0, 1, 1], "logprobs": [None] * 3, "prompt_length": 1, "turns": []}
        ],
    }
    with pytest.raises(ValueError, match="trajectory must be a JSON object, not list"):
        Trajectory.from_json([])


def test_masking_and_the_collator_read_the_typed_segments_as_they_read_the_json(answer, tokenizer):
    trajectory = Trajectory.from_json(answer)
    for typed, raw in zip(trajectory.segments, answer["segments"], strict=True):
        assert typed.tokens.split(100) == MaskedTokens(raw["token_ids"], raw["mask"], raw["logprobs"]).split(100)
        assert typed.tokens.labels() == [t if m else -100 for t, m in zip(raw["token_ids"], raw["mask"], strict=True)]
    collator = DataCollatorForAgentTrajectories(tokenizer, max_length=300)
    typed, raw = collator(trajectory.segments), collator(answer["segments"])
    assert typed.keys() == raw.keys() and all(torch.equal(typed[k], raw[k]) for k in raw)
    with pytest.raises(ValueError, match=r"feature.mask has 2 entries but token_ids has 1"):
        collator([{"token_ids": [1], "mask": [0, 1]}])


def test_replay_trains_on_the_last_segment_and_records_the_same_json(answer, tmp_path):
    last = answer["segments"][-1]
    start = last["prompt_length"]
    records = tmp_path / "episodes.jsonl"
    for trajectory in (answer, Trajectory.from_json(answer)):  # the JSON, or the typed trajectory
        replay = ReplayRollout([{"prompt": "p", "trajectory": trajectory}], record_to=records)
        output = replay(["p"], None)
        assert output["prompt_ids"] == [last["token_ids"][:start]]
        assert output["completion_ids"] == [last["token_ids"][start:]] and output["env_mask"] == [last["mask"][start:]]
        assert output["logprobs"] == [[lp or 0.0 for lp in last["logprobs"][start:]]]
        totals = replay.totals
        assert (totals["turns"], totals["forks"], totals["tool_calls/shell"]) == (3, 1, 2)
        assert totals["tokens_dropped_by_forks"] == sum(answer["segments"][0]["mask"])
    assert [json.loads(line)["trajectory"] for line in records.read_text().splitlines()] == [answer, answer]
    with pytest.raises(ValueError, match=r"item 0: .*trajectory.segments\[0\].mask has"):
        ReplayRollout([{"trajectory": mutate(answer, "segments.0.mask.0", DELETE)}], match="order")


class FakeGateway:
    """What `AgentRollout` needs from `ServerClient`, answering every session with `answer`."""

    weight_version = 0

    def __init__(self, answer: dict):
        self.answer, self.closed = answer, []

    def session_url(self, sid: str) -> str:
        return f"http://gateway/sessions/{sid}/v1"

    def trajectory(self, sid: str) -> dict:
        return self.answer

    def close_session(self, sid: str) -> None:
        self.closed.append(sid)


def test_the_live_rollout_reads_the_gateway_answer_into_a_trajectory(answer):
    gateway = FakeGateway(answer)
    rollout = AgentRollout(lambda example, base_url: {"answer": "done"}, gateway, progress=False)
    live = rollout(["p"], None)
    assert live == ReplayRollout([{"prompt": "p", "result": {"answer": "done"}, "trajectory": answer}])(["p"], None)
    assert rollout.last_episodes[0].trajectory == Trajectory.from_json(answer)

    gateway.answer = mutate(answer, "segments.1.turns.0.completion_tokens", -8)
    output = rollout(["p"], None)
    episode = rollout.last_episodes[0]
    assert output["failure"] == ["trajectory_error"] and episode.trajectory is None
    assert "trajectory.segments[1].turns[0].completion_tokens must be" in episode.error
    assert len(gateway.closed) == 2  # a malformed answer still frees the session
    rollout.close()


def test_the_trainer_side_imports_nothing_from_the_server():
    modules = ["trajectory", "journal", "masking", "rollout", "replay", "collator", "client"]
    code = f"import sys\nfor m in {modules}: __import__('trl.agents.' + m)\n"
    code += "print([m for m in sys.modules if m.startswith('trl.agents.server')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def record_fixture(model_dir: str, logs: Path) -> bytes:
    """Record `data/trajectory.json` from a real gateway (one CPU replica of the tiny model at `model_dir`)."""
    import httpx
    import openai

    from tests.helpers import FORCE, TOOLS
    from trl.agents.testing.servers import API_TOKEN, serve_async

    extra = ["--reasoning-parser", "qwen3", "--structured-outputs-config", '{"enable_in_reasoning": true}']
    with serve_async(model_dir, logs, *extra, replicas=1) as server:
        sid = "fixture-0"
        client = openai.OpenAI(base_url=f"{server.url}/sessions/{sid}/v1", api_key="-", timeout=300, max_retries=0)
        messages = [{"role": "system", "content": "You are a coding agent."}]
        messages.append({"role": "user", "content": "What is in this folder?"})
        for output in ("a.py\nb.py", "README.md"):
            body = dict(model=model_dir, tools=TOOLS, max_tokens=200, extra_body=FORCE, seed=0)
            message = client.chat.completions.create(messages=messages, **body).choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            messages.append({"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": output})
        # the agent compacts its history: a rewritten conversation, so the gateway starts a second segment
        summary = [{"role": "user", "content": "Summary so far: the folder has a.py, b.py and README.md. Finish."}]
        client.chat.completions.create(model=model_dir, messages=summary, tools=TOOLS, max_tokens=8, seed=0)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        response = httpx.get(f"{server.url}/sessions/{sid}/trajectory", headers=headers, timeout=30)
        response.raise_for_status()
        return response.content


if __name__ == "__main__":
    import tempfile

    FIXTURE.write_bytes(record_fixture(sys.argv[1], Path(tempfile.mkdtemp(prefix="trajectory-fixture-"))))
