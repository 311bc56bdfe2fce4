"""The operator's request to stop `danube up`: SIGINT (Ctrl-C), SIGTERM or SIGHUP."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator
from types import FrameType


class StopRequest:
    """Set by SIGINT, SIGTERM or SIGHUP; the main loop polls it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.event.is_set():
            self.signal_name = signal.Signals(signum).name
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Generator[None]:
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.handle) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set()
