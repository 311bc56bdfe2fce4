"""The `mask_stream` target: the worker's masking of 64 MiB of output in 4 KiB chunks
against 1,000 secrets (every form of DESIGN 13), over one Aho-Corasick scan (pyahocorasick)
of the same bytes, whole, for the same 1,000 raw values.

The value is the baseline's time over the masking's time (masking throughput as a share of
the bare scan's). Both automatons are built before the clock starts; the baseline's time
includes decoding the bytes as Latin-1, which pyahocorasick's `str`-only build needs to
scan bytes at all.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import ahocorasick

from benchmarks.report import Report
from danube_worker.masking import SecretMasker, secret_patterns

OUTPUT_BYTES = 64 << 20
CHUNK_BYTES = 4 << 10
SECRETS = 1_000
# About one secret, in one of its forms, per 200 lines of output.
LEAK_EVERY_LINES = 200


@dataclass
class Sizes:
    repeats: int


QUICK = Sizes(repeats=3)
FULL = Sizes(repeats=5)

_LINES = [
    b"2026-12-02T04:40:00.123Z INFO compiling danube/module_%d.py (%d ms)\n",
    b"  PASSED tests/test_thing.py::test_case_%d [ %d%%]\n",
    b"npm WARN deprecated package-%d@1.%d.0: use something else\n",
    b"\x1b[32m+\x1b[0m added layer sha256:%08x%08x\n",
]


def _secret_values(rng: random.Random) -> dict[str, bytes]:
    """API-token-like values, each with characters every encoding changes, one in ten
    multi-line (a short PEM-like key), so the forms of DESIGN 13 are distinct patterns."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    values: dict[str, bytes] = {}
    for i in range(SECRETS):
        token = "".join(rng.choices(alphabet, k=rng.randint(16, 40)))
        # A character that both URL encodings and the JSON escape rewrite.
        token = token[:8] + rng.choice(['"+/', " \\&", "é€/", "\t?"]) + token[8:]
        if i % 10 == 2:
            token = f"-----BEGIN KEY-----\n{token}\n{token[::-1]}\n-----END KEY-----\n"
        values[f"SECRET_{i}"] = token.encode()
    return values


def _output(rng: random.Random, forms: list[bytes]) -> bytes:
    out = bytearray()
    lines = 0
    while len(out) < OUTPUT_BYTES:
        out += rng.choice(_LINES) % (rng.randrange(1 << 16), rng.randrange(1 << 16))
        lines += 1
        if lines % LEAK_EVERY_LINES == 0:
            out += b"token=" + rng.choice(forms) + b"\n"
    return bytes(out[:OUTPUT_BYTES])


def _mask(masker: SecretMasker, chunks: list[bytes]) -> tuple[float, int]:
    stream = masker.stream()
    started = time.perf_counter()
    shipped = sum(len(stream.feed(chunk)) for chunk in chunks) + len(stream.finish())
    return time.perf_counter() - started, shipped


def _scan(automaton: ahocorasick.Automaton, output: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    matches = sum(1 for _ in automaton.iter(output.decode("latin-1")))
    return time.perf_counter() - started, matches


def run(report: Report, sizes: Sizes) -> None:
    rng = random.Random(13)
    secrets = _secret_values(rng)
    forms = sorted({form for value in secrets.values() for form in secret_patterns(value)})
    output = _output(rng, forms)
    chunks = [output[i : i + CHUNK_BYTES] for i in range(0, len(output), CHUNK_BYTES)]

    started = time.perf_counter()
    masker = SecretMasker(secrets)
    build_s = time.perf_counter() - started
    baseline = ahocorasick.Automaton()
    for name, value in secrets.items():
        baseline.add_word(value.decode("latin-1"), name)
    baseline.make_automaton()

    mask_times: list[float] = []
    scan_times: list[float] = []
    shipped = matches = 0
    for _ in range(sizes.repeats):
        seconds, shipped = _mask(masker, chunks)
        mask_times.append(seconds)
        seconds, matches = _scan(baseline, output)
        scan_times.append(seconds)

    mask_s, scan_s = statistics.median(mask_times), statistics.median(scan_times)
    report.target("mask_stream", scan_s / mask_s, 0.5, higher_is_better=True)
    mib = OUTPUT_BYTES / (1 << 20)
    report.raw(
        f"mask_stream: {masker.pattern_count} patterns (longest {masker.hold_back + 1} B), "
        f"automaton built in {build_s * 1000:.0f} ms; masking {mib / mask_s:.0f} MiB/s "
        f"(median {mask_s:.3f} s of {[round(t, 3) for t in mask_times]}), "
        f"{OUTPUT_BYTES - shipped} B fewer shipped; bare scan {mib / scan_s:.0f} MiB/s "
        f"(median {scan_s:.3f} s of {[round(t, 3) for t in scan_times]}, {matches} matches)"
    )
