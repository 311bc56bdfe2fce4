"""Secret masking of job output (DESIGN section 13): the patterns a job's secrets give, and
a stream masker that turns every run of their matches into `***`.

Patterns. For each secret value (bytes; a step sees it as UTF-8 text) the patterns are:
the value itself; for a value holding a line break, each of its lines as `bytes.splitlines`
gives them (without their terminators, otherwise as they are); and the whole value's
encodings: standard and URL-safe base64 at each of the three byte alignments the value can
have inside a longer base64 text (only the characters the value alone determines: at
alignment `a` the value's bits start at bit `8a` of a 24-bit group, so characters
`ceil(8a/6)` to `floor(8(a+n)/6) - 1` of `b64encode(a zero bytes + value)`), and, beyond
the letter of DESIGN 13, the value's own base64 without its `=` padding (its last
character mixes the value's last bits with padding bits, so it stands only at the end of
an encoding of the value alone, as in a JWT or a Basic header), hex in lower
and upper case, `quote(value, safe="")`, `quote_plus(value)`, and the JSON string escape
`json.dumps(value)[1:-1]` (of the value decoded as UTF-8; undecodable bytes become lone
surrogates, which the escape writes as `\\udcXX`). A pattern shorter than
`MIN_PATTERN_BYTES` (4) is dropped, whatever secret it comes from: the rule is per pattern,
so a 3-byte value is not masked but its 6-character hex is. The names of secrets whose
value itself is that short are in `SecretMasker.short_secrets`, for the caller to warn
about (by name, never by value).

What is masked. Over the whole output, take every occurrence of every pattern, overlapping
ones included, as a half-open byte interval `[start, end)`. A run is a maximal set of these
intervals connected by overlapping or touching (one starts at or before another's end):
`secretsecret` is one run, and so is `abcdef` when `abcd` and `cdef` are both patterns.
Each run becomes the three bytes `***`; every byte outside a run passes through as it was,
whatever it is (output need not be UTF-8).

Streaming. `MaskStream.feed` takes the next chunk and returns the bytes that are settled;
`finish` returns the rest. With `H = longest pattern length - 1`, after `feed` the stream
has seen `n` bytes and keeps the raw bytes from `settled = n - H` on. State: `emitted`,
the stream position up to which output has been given (as raw bytes or inside a `***`), and
`run_end`, the end of the last run given as `***` (which may still grow). Each `feed`
scans the kept bytes (the last `H` of before plus the chunk) with the automaton, sorts the
matches by start, and for each one:

- `start <= run_end`: it joins the last run: `run_end = emitted = max(run_end, end)`;
- otherwise, `start < settled`: emit the raw bytes `[emitted, start)`, then `***`;
  `run_end = emitted = end`;
- otherwise the match starts in the held-back bytes and nothing after it is decided: stop.

Then, if `emitted < settled`, emit the raw bytes `[emitted, settled)`. `finish` does the same
with `settled = n`. Why this equals masking the whole output at once:

1. Every match is seen in time: a match ending at `e` is first wholly present in the scan
   of the feed that brings byte `e - 1`, whose kept bytes start at or before
   `e - 1 - H >= start`; a match not yet acted on starts at or after `settled`, so the
   next scan (which starts at `settled`) sees it again.
2. Nothing decided is undone: a match not yet seen ends after `n`, so it starts at
   `n + 1 - (H + 1) = settled` or later. It cannot start a run before `settled`, so each
   `***` given is the start of a run of the whole output; it can join a run only where
   that run reaches `settled` (the run's `***` is given, its bytes held back), and raw
   bytes were given only below `settled` and outside every run, where no later match can
   reach.
3. Matches seen twice (in two scans) are joins of the run they already belong to, so
   rescanning changes nothing.

The automaton is `ahocorasick_rs.BytesAhoCorasick` (Rust, scans `bytes` directly with
overlapping matches). Measured for this workload (64 MiB of log lines in 4 KiB chunks,
7,348 patterns of 1,000 secrets, overlapping matches, the held-back bytes rescanned):
ahocorasick-rs 0.26-0.32 s, pyahocorasick 1.71-1.98 s (it wants `str`, so each chunk is
also decoded as Latin-1). Rescanning the held-back bytes costs `H / 4096` of a chunk's
scan, a few percent, and keeps the automaton stateless between chunks (neither library
lets a scan resume from a saved state). A feed costs a scan of `len(chunk) + H` bytes, so
a caller feeds what it reads from the pipe whole rather than in small pieces: a large
secret (a 10 KiB key has a 20 KiB hex form) makes `H` large. The `mask_stream`
benchmark (9,571 patterns, 64 MiB in 4 KiB chunks) masks at 58-71 MiB/s on a shared
2-CPU machine, about 3x the throughput of one bare pyahocorasick scan of the raw values.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from operator import itemgetter
from urllib.parse import quote, quote_plus

from ahocorasick_rs import BytesAhoCorasick

MIN_PATTERN_BYTES = 4
"""Patterns shorter than this are not masked: they would mask too much ordinary output."""

MASK = b"***"

_URLSAFE = bytes.maketrans(b"+/", b"-_")
_by_start = itemgetter(1)


def _base64_inside(value: bytes) -> set[bytes]:
    """The characters `value` alone determines in a longer base64 text, standard and
    URL-safe, at each of its three byte alignments."""
    found: set[bytes] = set()
    for align in range(3):
        encoded = base64.b64encode(bytes(align) + value)
        first = -(-8 * align // 6)  # ceil: the first character with no bit of the prefix
        stop = 8 * (align + len(value)) // 6  # floor: no bit of what follows
        found.add(encoded[first:stop])
    # The value's own encoding ends in a character with padding bits, determined by the
    # value alone too: masking it hides the last bits of an encoding that stands alone
    # (a JWT part, a Basic header) and no more.
    found.add(base64.b64encode(value).rstrip(b"="))
    return found | {pattern.translate(_URLSAFE) for pattern in found}


def secret_patterns(value: bytes) -> set[bytes]:
    """Every pattern of DESIGN 13 for one secret value, each at least `MIN_PATTERN_BYTES`."""
    found = {value}
    if b"\n" in value or b"\r" in value:
        found.update(value.splitlines())
    found |= _base64_inside(value)
    found.add(value.hex().encode("ascii"))
    found.add(value.hex().upper().encode("ascii"))
    found.add(quote(value, safe="").encode("ascii"))
    found.add(quote_plus(value).encode("ascii"))
    text = value.decode("utf-8", errors="surrogateescape")
    found.add(json.dumps(text)[1:-1].encode("ascii"))
    return {pattern for pattern in found if len(pattern) >= MIN_PATTERN_BYTES}


class SecretMasker:
    """The patterns of one job's secrets, compiled once; hands out a `MaskStream` per step."""

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        patterns: set[bytes] = set()
        for value in secrets.values():
            patterns |= secret_patterns(value)
        self.short_secrets: tuple[str, ...] = tuple(
            sorted(name for name, value in secrets.items() if len(value) < MIN_PATTERN_BYTES)
        )
        """Names of the secrets whose value is shorter than `MIN_PATTERN_BYTES`: the value
        itself is not masked. Warn about these by name; never log the value."""
        self.pattern_count = len(patterns)
        self.hold_back = max(map(len, patterns), default=1) - 1
        """How many bytes a stream keeps back: the longest pattern's length minus one."""
        self._automaton = BytesAhoCorasick(sorted(patterns)) if patterns else None

    def stream(self) -> MaskStream:
        return MaskStream(self._automaton, self.hold_back)

    def mask(self, data: bytes) -> bytes:
        """The whole of `data` masked at once."""
        stream = self.stream()
        return stream.feed(data) + stream.finish()

    def mask_chunks(self, chunks: Iterable[bytes]) -> bytes:
        """`chunks` masked as one stream (the same bytes as `mask` of their join)."""
        stream = self.stream()
        return b"".join([*map(stream.feed, chunks), stream.finish()])


class MaskStream:
    """One step's output, masked chunk by chunk; see the module docstring for the rule."""

    def __init__(self, automaton: BytesAhoCorasick | None, hold_back: int) -> None:
        self._automaton = automaton
        self._hold_back = hold_back
        self._kept = bytearray()  # raw bytes from stream position `_kept_from` on
        self._kept_from = 0
        self._emitted = 0
        self._run_end = -1  # no run yet
        self._finished = False

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk; return the masked bytes that no later chunk can change."""
        if self._finished:
            raise ValueError("this stream is finished")
        self._kept += chunk
        seen = self._kept_from + len(self._kept)
        return self._settle(max(self._kept_from, seen - self._hold_back))

    def finish(self) -> bytes:
        """End the stream: the held-back bytes, masked."""
        if self._finished:
            return b""
        self._finished = True
        return self._settle(self._kept_from + len(self._kept))

    def _settle(self, settled: int) -> bytes:
        kept, base = self._kept, self._kept_from
        if self._automaton is None:
            out = bytes(kept)
            kept.clear()
            self._kept_from = self._emitted = base + len(out)
            return out
        pieces: list[bytes | bytearray] = []
        emitted, run_end = self._emitted, self._run_end
        matches = self._automaton.find_matches_as_indexes(kept, overlapping=True)
        if len(matches) > 1:
            matches.sort(key=_by_start)
        for _, rel_start, rel_end in matches:
            start, end = base + rel_start, base + rel_end
            if start <= run_end:
                run_end = max(run_end, end)
                emitted = max(emitted, run_end)
            elif start < settled:
                pieces.append(kept[emitted - base : start - base])
                pieces.append(MASK)
                run_end = emitted = end
            else:
                break
        if emitted < settled:
            pieces.append(kept[emitted - base : settled - base])
            emitted = settled
        self._emitted, self._run_end = emitted, run_end
        # Keep from `settled` on: the next scan must see every match that may start there.
        del kept[: settled - base]
        self._kept_from = settled
        return b"".join(pieces)
