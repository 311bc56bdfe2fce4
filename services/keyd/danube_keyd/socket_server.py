"""keyd's socket loop: the two ROUTER sockets, ZAP peer authentication, and the poll loop.

`KeydServer` binds the ZAP handler and then the control and worker sockets, and serves
them from one thread: one poll(2) over the ZMQ_FD of the two ROUTER sockets and the ZAP
socket and a signal wakeup fd, draining each socket in bounded batches so that no peer
can starve the others, and sleeping no longer than the next cache deadline so that
expired jobs are reaped on time. Each request is answered by the
`danube_keyd.dispatcher.Dispatcher`, with the peer's uid and pid that ZAP attached to
the connection.

Memory is bounded per peer on the worker socket (DESIGN 5): libzmq queues at most
`WORKER_QUEUE` requests from a peer (beyond, it stops reading that peer's connection, so
the backlog stays in the peer's own buffers) and at most `WORKER_QUEUE` replies to it;
with `ROUTER_MANDATORY` a reply to a peer whose queue is full fails at once and is
dropped, counted and logged instead of piling up in keyd. A frame over
`MAX_MESSAGE_BYTES` makes libzmq close that peer's connection before keyd sees it;
libzmq reports that only as a disconnect, like any other, so keyd cannot log it apart.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import zmq

from danube_keyd.dispatcher import UNKNOWN_PEER, Dispatcher, Peer
from danube_keyd.peer_auth import (
    PEER_PID_PROPERTY,
    USER_ID_PROPERTY,
    ZAP_ENDPOINT,
    PeerAuthorizer,
)
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
# The control socket serves the API, which pipelines many requests and reads every reply.
HIGH_WATER_MARK = 1000
# A worker asks for one job's secrets at a time: a few queued requests and replies per
# peer are plenty, and a reply can be megabytes, so this bounds what a peer that never
# reads can make keyd hold.
WORKER_QUEUE = 4
# At most one "reply dropped" line per peer this often, so a flood cannot flood the log.
DROP_LOG_INTERVAL_S = 10.0
# A peer that connects and never completes the ZMTP handshake is dropped after this.
HANDSHAKE_MS = 5000
# A drain receives its first message at once (its socket's ZMQ_FD fired, so one is
# likely), asks ZMQ_EVENTS before the next ones up to this many, then reads until a
# receive fails: a lone request costs no exception, a burst no system calls per message.
EVENTS_CHECKED = 2
# The loop wakes at least this often even with nothing to do.
IDLE_POLL_MS = 1000
# Plain ints: combining pyzmq's enum flags costs microseconds per call on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


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
        self._drop_logged: dict[bytes, float] = {}
        self._peers = PeerTable()

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
                queue = WORKER_QUEUE if role == "worker" else HIGH_WATER_MARK
                sock.setsockopt(zmq.RCVHWM, queue)
                sock.setsockopt(zmq.SNDHWM, queue)
                # A reply to a full queue fails (EAGAIN) instead of vanishing unseen.
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
                self._sockets[role] = sock
                sock.bind(endpoint(path))
                path.chmod(0o660)
        finally:
            os.umask(previous_umask)

    def serve(self, wakeup_fd: int, on_wakeup: Callable[[], bool]) -> None:
        """Serve until `on_wakeup()`, called whenever `wakeup_fd` becomes readable (a
        signal arrived; the fd is drained first), returns True.

        The loop waits in one poll(2) on each socket's ZMQ_FD and the wakeup fd, and
        serves only the sockets whose fd fired. zmq_poll would instead ask every socket
        for ZMQ_EVENTS after each wait, each a getpid(2) and a poll(2) of its mailbox
        (strace of keyd under control pings: about nine system calls fewer per request
        with this loop).
        ZMQ_FD is edge-triggered: it fires when a socket's state may have changed, and
        only once; so a socket is served until ZMQ_EVENTS (the last call made on it
        before any wait) says nothing is waiting, one left with messages after a batch
        is served again without waiting, and a wait that times out serves every socket,
        so that no message can wait longer than IDLE_POLL_MS even in theory."""
        if self._zap is None:
            raise RuntimeError("KeydServer.serve() before bind()")
        zap = self._zap
        # Each server answers what is waiting on its socket, at most a batch, and says
        # whether it left messages waiting.
        servers: dict[int, Callable[[], bool]] = {zap.fileno(): partial(self._answer_zap, zap)}
        for role, sock in self._sockets.items():
            servers[sock.fileno()] = partial(self._drain, role, sock)
        waiter = select.poll()
        for fd in (*servers, wakeup_fd):
            waiter.register(fd, select.POLLIN)
        every = list(servers.values())
        due = every  # whatever arrived before the first wait
        while True:
            busy = [serve for serve in due if serve()]
            reaped = self._cache.reap()
            if reaped:
                log.info("jobs expired", count=reaped)
            self._dispatcher.finish_audit()  # a SIGHUP reload's line, for one
            fired = waiter.poll(0 if busy else self._poll_timeout_ms())
            if not fired:
                due = busy or every
                continue
            due = busy
            for fd, _ in fired:
                if fd == wakeup_fd:
                    _drain_fd(wakeup_fd)
                    if on_wakeup():
                        return
                else:
                    serve = servers[fd]
                    if serve not in due:
                        due.append(serve)

    def _poll_timeout_ms(self) -> int:
        wait = self._cache.seconds_until_next_deadline()
        if wait is None:
            return IDLE_POLL_MS
        return min(IDLE_POLL_MS, int(wait * 1000) + 1)

    def _answer_zap(self, zap: zmq.Socket[bytes]) -> bool:
        for _ in range(BATCH):
            if not _readable(zap):
                return False
            request = zap.recv_multipart(_NOBLOCK)
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
        return True

    def _drain(self, role: Role, sock: zmq.Socket[bytes]) -> bool:
        """Answer the messages waiting on `sock`, at most `BATCH` of them; True if it
        stopped at `BATCH` (more may be waiting).

        The first receive is tried at once: the drain runs because the socket's ZMQ_FD
        fired, which usually means a request, and the receive processes libzmq's
        pending commands itself, so asking ZMQ_EVENTS first only added a call to the
        request's path (measured in keyd: 5-9 us less per `job_secrets` round trip);
        when nothing is there it raises `zmq.Again`, off any request's path. Whether
        more is waiting is then asked of ZMQ_EVENTS up to `EVENTS_CHECKED` messages (a
        getpid(2) and a poll(2), cheaper than a receive failing, which raises); past
        them a burst is read until a receive fails, one exception per burst instead of
        two system calls per message. Each leaves the socket's ZMQ_FD armed for the
        next wait. Frames are read one
        at a time with their own `more` flag: `recv_multipart` asks ZMQ_RCVMORE through
        a getsockopt per frame."""
        answer = self._dispatcher.answer
        finish_audit = self._dispatcher.finish_audit
        peers = self._peers
        for handled in range(BATCH):
            if 0 < handled < EVENTS_CHECKED and not _readable(sock):
                return False
            try:
                first = sock.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return False
            frames = [first.bytes]
            frame = first
            while frame.more:
                frame = sock.recv(_NOBLOCK, copy=False)
                frames.append(frame.bytes)
            peer = peers.of(first)
            del first, frame
            reply = answer(role, frames, peer)
            if reply is not None:
                self._reply(role, sock, reply, peer)
                # After the reply is sent, before ZMQ_EVENTS is asked again: libzmq's
                # own command about the reply may arrive meanwhile and be taken up by
                # that check instead of waking the loop once more.
                finish_audit()
        return True

    def _reply(
        self, role: Role, sock: zmq.Socket[bytes], reply: list[bytes | bytearray], peer: Peer
    ) -> None:
        try:
            _send(sock, reply)
        except zmq.ZMQError as exc:
            # The peer is gone, or does not read its replies and its queue is full:
            # its loss, not others'. The reply is dropped, not kept.
            self._counters.dropped_replies += 1
            self._log_dropped_reply(role, reply[0], peer, exc)
        finally:
            last = reply[-1]
            if isinstance(last, bytearray):
                zero(last)

    def _log_dropped_reply(
        self, role: Role, routing_id: bytes | bytearray, peer: Peer, exc: zmq.ZMQError
    ) -> None:
        now = time.monotonic()
        key = bytes(routing_id)
        if now - self._drop_logged.get(key, -DROP_LOG_INTERVAL_S) < DROP_LOG_INTERVAL_S:
            return
        if len(self._drop_logged) > 4 * BATCH:
            self._drop_logged.clear()  # old peers' entries; a bounded map
        self._drop_logged[key] = now
        log.warning(
            "reply dropped",
            role=role,
            reason="peer gone" if exc.errno == zmq.EHOSTUNREACH else "peer not reading replies",
            peer_uid=peer.uid,
            peer_pid=peer.pid,
            dropped_replies=self._counters.dropped_replies,
        )

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


def _send(sock: zmq.Socket[bytes], reply: list[bytes | bytearray]) -> None:
    """Send without blocking; raises `zmq.ZMQError` if the peer is gone or its queue is
    full. Frame by frame with int flags, as `send_multipart` sends them without its
    per-frame type checks and enum arithmetic. Only the first frame can fail (a ROUTER
    checks the peer's queue on the routing id), so a failure leaves nothing half-sent.
    libzmq learns how much a peer has read from commands it processes lazily, so a
    queue can look full when it is not: a refused first frame has it process them
    (reading ZMQ_EVENTS does) and is tried once more before the reply is given up.
    copy=True (the default): libzmq gets its own copy, so the caller can zero a
    plaintext buffer after."""
    send = sock.send
    try:
        send(reply[0], _MORE_NOBLOCK)
    except zmq.Again:
        sock.getsockopt(_EVENTS)
        send(reply[0], _MORE_NOBLOCK)
    last = len(reply) - 1
    for index in range(1, last):
        send(reply[index], _MORE_NOBLOCK)
    send(reply[last], _NOBLOCK)


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a whole message is waiting: ZMQ_EVENTS, without an exception for no."""
    events = sock.getsockopt(_EVENTS)
    return isinstance(events, int) and bool(events & _POLLIN)


class PeerTable:
    """The `Peer` of a message: the uid and pid ZAP attached to its connection, read
    from the frame (`zmq_msg_gets`) and parsed once per distinct pair, so that a message
    costs two property reads and a dict lookup."""

    # Distinct (uid, pid) pairs kept; past it the table starts over (a bounded map).
    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._known: dict[tuple[object, object], Peer] = {}

    def of(self, frame: zmq.Frame) -> Peer:
        try:
            key = (frame.get(USER_ID_PROPERTY), frame.get(PEER_PID_PROPERTY))
        except zmq.ZMQError:
            return UNKNOWN_PEER
        peer = self._known.get(key)
        if peer is None:
            if len(self._known) >= self.MAX_ENTRIES:
                self._known.clear()
            uid, pid = key
            peer = Peer(
                uid=int(uid) if isinstance(uid, str) and uid.isdigit() else None,
                pid=int(pid) if isinstance(pid, str) and pid.isdigit() else None,
            )
            self._known[key] = peer
        return peer


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _unlink_socket(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("socket file not removed", path=str(path), error=exc.strerror)
