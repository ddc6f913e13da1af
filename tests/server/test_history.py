"""server/history.py: messages tied to their turn, so trimming never makes a cut hit the wrong message."""

from __future__ import annotations

from server.history import History


def test_user_and_agent_messages_in_turn_order() -> None:
    history = History(10)
    history.add_user(1, "hi")
    history.set_reply(1, "hello")
    history.add_user(2, "how are you")
    assert history.messages() == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
    ]


def test_set_reply_replaces_the_turns_own_message() -> None:
    history = History(10)
    history.add_user(1, "hi")
    history.set_reply(1, "hel")
    history.set_reply(1, "hello there")
    assert [e.content for e in history.entries()] == ["hi", "hello there"]


def test_a_cut_finds_its_message_after_the_history_was_trimmed() -> None:
    history = History(4)
    for turn in range(1, 4):
        history.add_user(turn, f"q{turn}")
        history.set_reply(turn, f"a{turn}")
    history.add_user(4, "q4")
    history.set_reply(4, "the whole unspoken reply")  # the LLM finished before the barge-in
    assert len(history) == 4
    history.cut_reply(4, "the whole")
    assert history.messages()[-1] == {"role": "assistant", "content": "the whole"}
    assert not any("unspoken" in e.content for e in history.entries())


def test_a_cut_with_nothing_spoken_removes_the_agents_message() -> None:
    history = History(10)
    history.add_user(1, "q")
    history.set_reply(1, "never heard")
    history.cut_reply(1, "")
    assert history.messages() == [{"role": "user", "content": "q"}]


def test_a_late_reply_goes_before_the_next_turns_message() -> None:
    history = History(10)
    history.add_user(1, "q1")
    history.add_user(2, "q2")  # the user spoke again before turn 1's cut was recorded
    history.cut_reply(1, "part of a1")
    assert [(e.turn, e.role) for e in history.entries()] == [(1, "user"), (1, "assistant"), (2, "user")]


def test_the_newest_message_is_kept_even_with_no_history() -> None:
    history = History(0)
    history.add_user(1, "q")
    assert history.messages() == [{"role": "user", "content": "q"}]
    history.set_reply(1, "a")
    assert history.messages() == [{"role": "assistant", "content": "a"}]


def test_a_clients_own_messages_go_where_it_says_and_never_pass_for_a_reply() -> None:
    history = History(10)
    history.add_user(1, "hi")
    history.set_reply(1, "hello")
    history.add_item("c1", "assistant", "an aside", at=None, turn=1)
    history.add_item("c0", "system", "be kind", at=0, turn=1)
    assert [(e.role, e.content) for e in history.entries()] == [
        ("system", "be kind"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("assistant", "an aside"),
    ]
    history.cut_reply(1, "hel")  # turn 1's own answer, not the client's assistant message after it
    assert [e.content for e in history.entries()] == ["be kind", "hi", "hel", "an aside"]
    assert history.find(item="c1") == 3
    assert history.find(turn=1, role="user") == 1
    assert history.find(turn=1, role="assistant") == 2
    history.remove_at(history.find(item="c0") or 0)
    assert history.find(item="c0") is None
    assert [e.content for e in history.entries()] == ["hi", "hel", "an aside"]
