"""The in-memory session store: bounded, idle sessions expire, a closed one is gone."""

from __future__ import annotations

import time

from danube_api.web.sessions import SessionStore


def test_a_session_is_found_by_its_id_until_closed() -> None:
    store = SessionStore()
    session = store.open(b"h" * 32)
    assert store.get(session.session_id) is session
    store.close(session.session_id)
    assert store.get(session.session_id) is None


def test_ids_and_csrf_tokens_are_random_and_distinct() -> None:
    store = SessionStore()
    sessions = [store.open(b"h" * 32) for _ in range(50)]
    values = {s.session_id for s in sessions} | {s.csrf_token for s in sessions}
    assert len(values) == 100
    assert all(len(value) >= 40 for value in values)


def test_the_store_is_bounded_and_drops_the_least_recently_used() -> None:
    store = SessionStore(max_sessions=3)
    first, second, third = (store.open(b"h" * 32) for _ in range(3))
    assert store.get(first.session_id) is first  # now the most recently used
    fourth = store.open(b"h" * 32)
    assert len(store) == 3
    assert store.get(second.session_id) is None
    assert all(store.get(s.session_id) is s for s in (first, third, fourth))


def test_an_idle_session_expires() -> None:
    store = SessionStore(idle_timeout_s=0.05)
    session = store.open(b"h" * 32)
    time.sleep(0.2)
    assert store.get(session.session_id) is None
    assert len(store) == 0


def test_unknown_or_missing_ids_find_nothing() -> None:
    store = SessionStore()
    assert store.get(None) is None
    assert store.get("") is None
    assert store.get("nope") is None
