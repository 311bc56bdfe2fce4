"""Row ids: time-ordered UUIDv7 strings made in Python."""

from __future__ import annotations

import threading
import time
import uuid

from danube_shared.db.ids import new_id


def test_an_id_is_a_36_character_uuid_of_version_7_and_the_rfc_variant():
    value = new_id()
    parsed = uuid.UUID(value)
    assert len(value) == 36
    assert str(parsed) == value
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_an_id_starts_with_the_unix_time_in_milliseconds():
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(value).int >> 80 <= after + 1


def test_ids_made_one_after_another_sort_in_the_order_they_were_made():
    values = [new_id() for _ in range(20_000)]  # many share a millisecond
    assert values == sorted(values)
    assert all(str(uuid.UUID(value)) == value for value in values)
    assert len(set(values)) == len(values)


def test_ids_made_on_several_threads_are_all_distinct():
    made: list[list[str]] = [[] for _ in range(4)]

    def make(bucket: list[str]) -> None:
        bucket.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(bucket,)) for bucket in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for bucket in made for value in bucket]
    assert len(set(every)) == len(every) == 20_000
