"""keyd's per-job cache: TTL, drop, replacement, token check and zeroing."""

# ruff: noqa: S105 -- job tokens here are test data, not credentials

from __future__ import annotations

import ctypes
import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danube_keyd.secret_cache import CacheFull, JobNotCached, SecretCache, TokenMismatch
from danube_shared.keyd_protocol import MAX_NAME_CHARS, JobSecretsReply

TOKEN = "job-token"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).digest()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> SecretCache:
    return SecretCache(3600, max_jobs=3, clock=clock)


def test_loaded_secrets_are_returned_for_the_right_token(cache: SecretCache) -> None:
    """job_secrets with the job's token gets exactly the loaded secrets."""
    assert cache.load("job-1", TOKEN_SHA256, 60, {"A": bytearray(b"a"), "B": bytearray(b"b")}) == 2
    assert dict(cache.secrets_for("job-1", TOKEN)) == {"A": b"a", "B": b"b"}


def test_a_wrong_token_is_refused(cache: SecretCache) -> None:
    """Another token (even a prefix of the right one) is a TokenMismatch."""
    cache.load("job-1", TOKEN_SHA256, 60, {"A": bytearray(b"a")})
    for wrong in ("", "job-toke", "job-token ", "JOB-TOKEN"):
        with pytest.raises(TokenMismatch):
            cache.secrets_for("job-1", wrong)


def test_an_unknown_job_is_not_cached(cache: SecretCache) -> None:
    """Asking for a job never loaded raises JobNotCached."""
    with pytest.raises(JobNotCached):
        cache.secrets_for("nope", TOKEN)


def test_an_entry_expires_after_its_ttl(cache: SecretCache, clock: Clock) -> None:
    """A job is served until its TTL and not after."""
    cache.load("job-1", TOKEN_SHA256, 60, {"A": bytearray(b"a")})
    clock.now += 59.9
    assert cache.secrets_for("job-1", TOKEN)
    clock.now += 0.1
    with pytest.raises(JobNotCached):
        cache.secrets_for("job-1", TOKEN)
    assert len(cache) == 0


def test_the_ttl_is_capped_by_the_cache(clock: Clock) -> None:
    """A ttl_s beyond keyd.cache_ttl_s is cut to it."""
    cache = SecretCache(10, max_jobs=3, clock=clock)
    cache.load("job-1", TOKEN_SHA256, 3600, {"A": bytearray(b"a")})
    assert cache.seconds_until_next_deadline() == 10
    clock.now += 10
    assert cache.reap() == 1


def test_reap_drops_expired_jobs_only(cache: SecretCache, clock: Clock) -> None:
    """reap() removes the jobs past their deadline and keeps the others."""
    cache.load("short", TOKEN_SHA256, 5, {"A": bytearray(b"a")})
    cache.load("long", TOKEN_SHA256, 50, {"A": bytearray(b"a")})
    clock.now += 5
    assert cache.reap() == 1
    assert len(cache) == 1
    assert cache.secrets_for("long", TOKEN)


def test_reaping_zeroes_the_plaintext_buffers(cache: SecretCache, clock: Clock) -> None:
    """An expired job's bytearrays are overwritten with zeros when it is reaped."""
    value = bytearray(b"s3cret")
    cache.load("job-1", TOKEN_SHA256, 5, {"A": value})
    clock.now += 5
    cache.reap()
    assert value == bytes(6)


def test_dropping_zeroes_the_plaintext_buffers(cache: SecretCache) -> None:
    """job_drop overwrites the job's bytearrays and reports that it held the job."""
    first, second = bytearray(b"one"), bytearray(b"two!")
    cache.load("job-1", TOKEN_SHA256, 60, {"A": first, "B": second})
    assert cache.drop("job-1") is True
    assert first == bytes(3)
    assert second == bytes(4)
    with pytest.raises(JobNotCached):
        cache.secrets_for("job-1", TOKEN)


def test_dropping_an_unknown_job_reports_false(cache: SecretCache) -> None:
    """job_drop of a job not cached is False, not an error."""
    assert cache.drop("nope") is False


def test_loading_a_job_again_replaces_it_and_zeroes_the_old(
    cache: SecretCache, clock: Clock
) -> None:
    """A second job_load for the same id replaces secrets, token and deadline."""
    old = bytearray(b"old")
    cache.load("job-1", TOKEN_SHA256, 5, {"A": old})
    new_token = "new-token"
    cache.load("job-1", hashlib.sha256(new_token.encode()).digest(), 60, {"B": bytearray(b"new")})
    assert old == bytes(3)
    with pytest.raises(TokenMismatch):
        cache.secrets_for("job-1", TOKEN)
    clock.now += 30  # past the old deadline: the stale heap row must not reap the new job
    assert cache.reap() == 0
    assert dict(cache.secrets_for("job-1", new_token)) == {"B": b"new"}


def test_the_next_deadline_tells_the_loop_how_long_to_sleep(
    cache: SecretCache, clock: Clock
) -> None:
    """seconds_until_next_deadline is None when empty and skips dropped jobs."""
    assert cache.seconds_until_next_deadline() is None
    cache.load("a", TOKEN_SHA256, 5, {})
    cache.load("b", TOKEN_SHA256, 20, {})
    assert cache.seconds_until_next_deadline() == 5
    cache.drop("a")
    assert cache.seconds_until_next_deadline() == 20
    clock.now += 25
    assert cache.seconds_until_next_deadline() == 0


def test_a_full_cache_refuses_new_jobs_but_replaces_existing_ones(cache: SecretCache) -> None:
    """At max_jobs, loading a new id raises CacheFull; reloading a cached id works."""
    for job_id in ("a", "b", "c"):
        cache.load(job_id, TOKEN_SHA256, 60, {})
    with pytest.raises(CacheFull):
        cache.load("d", TOKEN_SHA256, 60, {})
    cache.load("a", TOKEN_SHA256, 60, {"A": bytearray(b"x")})
    assert cache.secret_count() == 1


def test_clear_zeroes_everything(cache: SecretCache) -> None:
    """clear() (keyd's shutdown) zeroes and forgets every job."""
    value = bytearray(b"abc")
    cache.load("a", TOKEN_SHA256, 60, {"A": value})
    cache.clear()
    assert value == bytes(3)
    assert len(cache) == 0
    assert cache.seconds_until_next_deadline() is None


_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=MAX_NAME_CHARS)
_values = st.one_of(
    st.binary(max_size=300),
    # Past 255 and 65,535 bytes msgpack's bin header grows to 3 and then 5 bytes.
    st.integers(min_value=65_530, max_value=70_000).map(lambda size: b"v" * size),
)


@settings(max_examples=60, deadline=None)
@given(secrets=st.dictionaries(_names, _values, max_size=40))
def test_a_job_secrets_reply_fits_the_capacity_made_for_it(secrets: dict[str, bytes]) -> None:
    """The reply's buffer, made at the cached job's `reply_capacity`, is never grown by the
    encoder (a grown buffer leaves plaintext behind where it cannot be zeroed)."""
    cache = SecretCache(3600, max_jobs=1)
    cache.load("job-1", TOKEN_SHA256, 60, {name: bytearray(v) for name, v in secrets.items()})
    buffer = bytearray(cache.reply_capacity("job-1"))
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    reply = JobSecretsReply(
        id=2**63 - 1,
        secrets={name: bytes(value) for name, value in cache.secrets_for("job-1", TOKEN).items()},
    )
    msgspec.msgpack.Encoder().encode_into(reply, buffer)
    assert ctypes.addressof(ctypes.c_char.from_buffer(buffer)) == address
    assert msgspec.msgpack.decode(buffer, type=JobSecretsReply).secrets == secrets


def test_an_uncached_job_has_no_reply_capacity(cache: SecretCache) -> None:
    """Nothing to hold for a job that is not cached."""
    assert cache.reply_capacity("nope") == 0
