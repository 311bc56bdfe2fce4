"""keyd's socket loop: the two ROUTER sockets, ZAP peer authentication, and the poll loop.

`KeydServer` binds the ZAP handler and then the control and worker sockets, and serves
them from one thread: one `zmq.Poller` over the two ROUTER sockets, the ZAP socket and a
signal wakeup fd, draining each socket in bounded batches so that no peer can starve the
others, and sleeping no longer than the next cache deadline so that expired jobs are
reaped on time. Each request is answered by the `danube_keyd.dispatcher.Dispatcher`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq

from danube_keyd.dispatcher import Dispatcher
from danube_keyd.peer_auth import ZAP_ENDPOINT, PeerAuthorizer
from danube_keyd.secret_cache import SecretCache
from danube_keyd.wiping import zero
from danube_shared.config import KeydSettings
from danube_shared.keyd_protocol import (
    CONTROL_ZAP_DOMAIN,
    MAX_MESSAGE_BYTES,
    WORKER_ZAP_DOMAIN,
    Role,
    control_socket_path,
    endpoint,
    worker_socket_path,
)
from danube_shared.logs import get_logger

log = get_logger(__name__)

# How many messages one socket may hand the loop before the others get a turn.
BATCH = 256
# Bounded queues: past this many messages per peer, ROUTER drops rather than blocks.
HIGH_WATER_MARK = 1000
# A peer that connects and never completes the ZMTP handshake is dropped after this.
HANDSHAKE_MS = 5000
# The loop wakes at least this often even with nothing to do.
IDLE_POLL_MS = 1000


class KeydServer:
    """The two ROUTER sockets, the ZAP handler and the loop that serves them."""

    def __init__(
        self,
        settings: KeydSettings,
        dispatcher: Dispatcher,
        cache: SecretCache,
        *,
        keyd_uid: int,
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._cache = cache
        self._counters = dispatcher.counters
        self._authorizer = PeerAuthorizer(
            {
                CONTROL_ZAP_DOMAIN: frozenset({keyd_uid, *settings.control_uids}),
                WORKER_ZAP_DOMAIN: frozenset({keyd_uid, *settings.worker_uids}),
            }
        )
        self.control_path = control_socket_path(settings.socket_dir)
        self.worker_path = worker_socket_path(settings.socket_dir)
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._zap: zmq.Socket[bytes] | None = None
        self._sockets: dict[Role, zmq.Socket[bytes]] = {}
        self._debug = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)

    def bind(self) -> None:
        """Bind the ZAP handler, then both sockets (0660). Raises `zmq.ZMQError`."""
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._context = context
        # The ZAP handler is bound before any socket that needs it; with
        # ZAP_ENFORCE_DOMAIN a connection is refused, not waved through, if it is gone.
        zap = context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        self._zap = zap
        previous_umask = os.umask(0o117)  # socket files are created 0660
        endpoints: tuple[tuple[Role, str, Path], ...] = (
            ("control", CONTROL_ZAP_DOMAIN, self.control_path),
            ("worker", WORKER_ZAP_DOMAIN, self.worker_path),
        )
        try:
            for role, domain, path in endpoints:
                sock = context.socket(zmq.ROUTER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
                sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
                sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
                sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
                self._sockets[role] = sock
                sock.bind(endpoint(path))
                path.chmod(0o660)
        finally:
            os.umask(previous_umask)

    def serve(self, wakeup_fd: int) -> None:
        """Serve until `wakeup_fd` becomes readable (a signal arrived)."""
        if self._zap is None:
            raise RuntimeError("KeydServer.serve() before bind()")
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        poller.register(wakeup_fd, zmq.POLLIN)
        roles = list(self._sockets.items())
        while True:
            ready = dict(poller.poll(self._poll_timeout_ms()))
            if wakeup_fd in ready:
                return
            if self._zap in ready:
                self._answer_zap(self._zap)
            for role, sock in roles:
                if sock in ready:
                    self._drain(role, sock)
            reaped = self._cache.reap()
            if reaped:
                log.info("jobs expired", count=reaped)

    def _poll_timeout_ms(self) -> int:
        wait = self._cache.seconds_until_next_deadline()
        if wait is None:
            return IDLE_POLL_MS
        return min(IDLE_POLL_MS, int(wait * 1000) + 1)

    def _answer_zap(self, zap: zmq.Socket[bytes]) -> None:
        while True:
            try:
                request = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            decision = self._authorizer.decide(request)
            if not decision.allowed:
                self._counters.denied_connections += 1
                log.warning(
                    "connection refused",
                    domain=decision.domain,
                    peer_uid=decision.uid,
                    peer_pid=decision.pid,
                    reason=decision.reason,
                )
            elif self._debug:
                log.debug("connection accepted", domain=decision.domain, peer_uid=decision.uid)
            zap.send_multipart(self._authorizer.reply(request, decision))

    def _drain(self, role: Role, sock: zmq.Socket[bytes]) -> None:
        answer = self._dispatcher.answer
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = answer(role, frames)
            if reply is None:
                continue
            try:
                # copy=True: libzmq gets its own copy, so the buffer can be zeroed below.
                sock.send_multipart(reply, zmq.NOBLOCK, copy=True)
            except zmq.ZMQError:
                # The peer is gone or over its high-water mark: its loss, not others'.
                self._counters.dropped_messages += 1
            last = reply[-1]
            if isinstance(last, bytearray):
                zero(last)

    def close(self) -> None:
        """Close the sockets (libzmq unlinks their files) and the context."""
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if self._zap is not None:
            self._zap.close(linger=0)
            self._zap = None
        for path in (self.control_path, self.worker_path):
            _unlink_socket(path)
        if self._context is not None:
            self._context.term()
            self._context = None


def _unlink_socket(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("socket file not removed", path=str(path), error=exc.strerror)
