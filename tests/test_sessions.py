"""Pure recording logic: when a request extends a segment, and how segments count forks."""

from __future__ import annotations

from trl.agents.masking import MaskedTokens
from trl.agents.server.sessions import Session, canonical_message, new_messages


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
