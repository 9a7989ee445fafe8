"""Pure recording logic: when a request extends a segment, and how segments count forks."""

from __future__ import annotations

import pytest

from trl.agents.journal import JournalError
from trl.agents.masking import MaskedTokens
from trl.agents.server import sessions
from trl.agents.server.routing import ReplicaHandle, Router
from trl.agents.server.sessions import Session, SessionClosed, SessionStore, canonical_message, new_messages
from trl.agents.trajectory import TurnRecord


def test_echoed_assistant_reply_matches_what_was_returned():
    returned = {
        "role": "assistant",
        "content": None,
        "reasoning": "hmm",
        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "shell", "arguments": '{"x": true}'}}],
    }
    # What an agent sends back: other id, no reasoning, no null fields, different JSON spacing.
    echoed = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "b", "type": "function", "function": {"name": "shell", "arguments": '{"x":true}'}}],
    }
    assert canonical_message(returned) == canonical_message(echoed)


def test_changed_content_or_arguments_do_not_match():
    base = {"role": "user", "content": "fix the bug"}
    assert canonical_message(base) != canonical_message({"role": "user", "content": "fix the bugs"})
    call = {"role": "assistant", "tool_calls": [{"function": {"name": "shell", "arguments": '{"x": true}'}}]}
    other = {"role": "assistant", "tool_calls": [{"function": {"name": "shell", "arguments": '{"x": false}'}}]}
    assert canonical_message(call) != canonical_message(other)


def test_content_parts_equal_plain_text():
    parts = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert canonical_message(parts) == canonical_message({"role": "user", "content": "ab"})


def test_new_messages_only_for_strict_extensions():
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    recorded = [canonical_message(m) for m in history]
    tool = {"role": "tool", "content": "out"}
    assert new_messages(recorded, [*history, tool]) == [tool]
    assert new_messages(recorded, history) is None  # nothing new: a retry, not an extension
    assert new_messages(recorded, [{"role": "user", "content": "A"}, history[1], tool]) is None
    assert new_messages([], [tool]) is None


def test_forks_count_segments_after_the_first():
    session = Session("s", "replica-0")
    session.start_segment()
    assert session.forks == 0
    session.start_segment()
    assert session.forks == 1 and len(session.segments) == 2


def test_masked_tokens_track_origin():
    tokens = MaskedTokens()
    tokens.add_context([1, 2, 3])
    tokens.add_sampled([4, 5], [-0.1, -0.2])
    tokens.add_context([6])
    assert tokens.mask == [0, 0, 0, 1, 1, 0]
    assert tokens.logprobs == [None, None, None, -0.1, -0.2, None]
    assert tokens.prompt_length == 3 and tokens.num_sampled == 2


def record_turn(store: SessionStore, session: Session, context: list[int], sampled: list[int], version: int) -> None:
    segment = session.current or session.start_segment()
    segment.tokens.add_context(context)
    segment.tokens.add_sampled(sampled, [-0.5] * len(sampled))
    segment.messages.append(f"message {len(segment.messages)}")
    segment.turns.append(TurnRecord(version, "stop", len(segment.tokens) - len(sampled), len(sampled), ["shell"], 0.1))
    store.save(session)


def test_journal_reloads_every_session_exactly(tmp_path):
    store = SessionStore(tmp_path)
    a, b = store.create("ep-a", "replica-0"), store.create("ep-b", "replica-1")
    record_turn(store, a, [1, 2, 3], [4, 5], 0)
    record_turn(store, a, [6], [7, 8, 9], 1)
    record_turn(store, b, [1], [2], 0)
    a.start_segment()  # a fork: the old segment stays as it was
    record_turn(store, a, [1, 2], [10], 2)
    store.save(a)  # nothing new: nothing written
    assert len((tmp_path / "ep-a.jsonl").read_text().splitlines()) == 4  # created + 3 turns
    reloaded = SessionStore(tmp_path)
    assert {s.session_id: s.trajectory() for s in reloaded} == {s.session_id: s.trajectory() for s in store}
    assert reloaded.get("ep-a").forks == 1 and reloaded.get("ep-a").segments[0].messages == ["message 0", "message 1"]
    record_turn(reloaded, reloaded.get("ep-b"), [3], [4], 3)  # recording goes on after a restart
    assert SessionStore(tmp_path).get("ep-b").trajectory() == reloaded.get("ep-b").trajectory()
    reloaded.delete("ep-a")
    assert not (tmp_path / "ep-a.jsonl").exists()
    with pytest.raises(SessionClosed, match="'ep-a' is closed"):  # and it stays closed after a restart
        SessionStore(tmp_path).get("ep-a")


def test_a_deleted_session_stays_closed_and_the_memory_of_it_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(sessions, "CLOSED_KEPT", 3)
    store = SessionStore(tmp_path)
    for i in range(5):
        store.create(f"ep-{i}", "replica-0")
        store.delete(f"ep-{i}")
    for call in (store.get, store.delete, lambda sid: store.create(sid, "replica-0")):
        with pytest.raises(SessionClosed, match="a new episode needs a new session id"):
            call("ep-4")
    assert store.get("ep-0") is None and store.delete("never-opened") is None  # forgotten: the 3 newest are kept
    reloaded = SessionStore(tmp_path)  # the journal folder's closed.txt, compacted to the same 3
    assert (tmp_path / "closed.txt").read_text().split() == ["ep-2", "ep-3", "ep-4"]
    with pytest.raises(SessionClosed):
        reloaded.create("ep-2", "replica-0")
    assert reloaded.create("ep-1", "replica-0").session_id == "ep-1"


def test_journal_skips_a_torn_last_line_and_refuses_damage_elsewhere(tmp_path):
    store = SessionStore(tmp_path)
    session = store.create("ep", "replica-0")
    record_turn(store, session, [1], [2], 0)
    intact = session.trajectory().to_json()
    with open(tmp_path / "ep.jsonl", "a") as f:
        f.write('{"segment": 0, "forks": 0, "token_ids": [3')  # a crash in the middle of a write
    reloaded = SessionStore(tmp_path)
    assert reloaded.get("ep").trajectory().to_json() == intact and reloaded.torn_lines == 1
    lines = (tmp_path / "ep.jsonl").read_text().splitlines()
    (tmp_path / "ep.jsonl").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(JournalError, match="ep.jsonl, line 2, is damaged"):
        SessionStore(tmp_path)


def test_router_adopts_journaled_sessions_on_their_replica_or_a_stable_one():
    router = Router([ReplicaHandle("replica-0", "http://a"), ReplicaHandle("replica-1", "http://b")])
    assert router.adopt_session("s1", "replica-1") == "replica-1"
    moved = [router.adopt_session(f"s{i}", "replica-7") for i in range(20)]  # started with fewer replicas now
    assert moved == [router.adopt_session(f"s{i}", "replica-7") for i in range(20)]  # same journal, same landing
    assert set(moved) == {"replica-0", "replica-1"}
    assert sum(r.sessions for r in router.replicas) == 1 + 40
    before = {r.name: r.sessions for r in router.replicas}
    assert before[router.assign_session().name] == min(before.values())  # new sessions go where fewest are


def test_a_journal_of_an_older_version_matches_the_same_messages(tmp_path):
    """Canonical messages were spelled by `json.dumps` before msgspec: reloaded, they still match the messages they
    stand for, so a gateway upgraded mid-run does not fork every session."""
    import json

    messages = [{"role": "user", "content": "héllo \"x\"\n"}, {"role": "assistant", "content": "ok", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": '{"z": 1, "a": [1, 2]}'}}]}]  # fmt: skip
    store = SessionStore(tmp_path)
    segment = store.create("ep-old", "replica-0").start_segment()
    segment.tokens.add_context([1])
    segment.tokens.add_sampled([2], [-0.5])
    segment.messages = [
        json.dumps(json.loads(canonical_message(m)), sort_keys=True, ensure_ascii=False) for m in messages
    ]
    assert segment.messages != [canonical_message(m) for m in messages]  # the old spelling differs
    store.save(store.get("ep-old"))
    reloaded = SessionStore(tmp_path).get("ep-old")
    assert reloaded.current.messages == [canonical_message(m) for m in messages]
    assert new_messages(reloaded.current.messages, [*messages, {"role": "user", "content": "next"}]) is not None


@pytest.mark.parametrize("arguments", ['{"x": "\\ud800"}', '{"x": NaN}', "not json", '{"x": "\ud800"}'])
def test_tool_call_arguments_json_cannot_spell_back_are_compared_as_text(arguments):
    """A lone surrogate or NaN in a tool call's arguments (a model can sample them) must not fail the turn: such
    arguments are compared as the text they are, and equal arguments still match."""
    message = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": arguments}}]}
    echoed = {"tool_calls": [{"id": "c1", "function": {"arguments": arguments, "name": "f"}}], "role": "assistant"}
    assert canonical_message(message) == canonical_message(echoed)
