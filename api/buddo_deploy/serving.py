"""The API's gunicorn worker: gthread, but no thread waits for a request to arrive.

gunicorn's gthread worker hands a connection to a thread as soon as it is readable, and
the thread reads the request with blocking reads: a client that sends its request
slowly (slowloris) holds a thread for as long as it likes, and a few such clients hold
them all. Here a thread reads only what has arrived (non-blocking) and serves the
request once its head is in, with its body when the head declares a length up to the
API's body limit; until then the connection goes back to the worker's event loop, which
hands it to a thread again when more arrives. A request that has not arrived in full
within ``BUDDO_API_REQUEST_TIMEOUT`` of its first byte (or of the connection, for the
first request) is answered 408 and the connection closed; a head over ``HEAD_MAX`` is
431. Idle kept-alive connections wait in the event loop as before (``keepalive``).

Why the thread reads, not the event loop: every recv gives up the GIL, and taking it back
on a busy worker takes up to the switch interval (5 ms). The event loop is on every
request's path, so a read there costs throughput (measured: a fifth of it); a thread's
read is what gthread does anyway.

An answer the client has not taken within the same timeout of its first byte is abandoned
(a small one goes to the kernel's send buffer at once), and each blocking read or write of
a thread (a chunked or ``Expect: 100-continue`` body, an answer) is bounded by it too
(``SO_RCVTIMEO``/``SO_SNDTIMEO``), so no client holds a thread for long.

A request the app *parks* (``environ["buddo.park"]``: a status wait, ``?wait_for=``) holds
no thread while it waits: its WSGI call ends unanswered, the connection waits in the event
loop, and one waker thread per worker asks every parked request's ``check`` once per
``WAKE_S`` (one call for all requests that share it: one query for a hundred waiters). When
the check says so, or at the request's deadline, the request is served again from its kept
bytes with ``environ["buddo.resumed"]``, and answers then (the rate limit counted it once).

A connection is with one thread or with the event loop at a time (gthread's rule), so
the request's bytes need no lock; the deadlines (``arriving``) are the event loop's
alone. TLS and cleartext HTTP/2 (not used: Caddy terminates TLS in front) fall back to
gthread's own behaviour.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from .settings import MAX_BODY_BYTES, api_request_timeout_s

# The longest request head waited for; the API's longest is a few kB (a JWT and the usual headers).
HEAD_MAX = 64 * 1024
# A declared body up to this is in before a thread serves the request: the API's own limit
# (a longer one is answered 413 from Content-Length, unread).
BODY_MAX = MAX_BODY_BYTES
_RECV = 64 * 1024
# A closing connection is drained this long and this much at most (gunicorn's close_graceful).
LINGER_S = 2.0
LINGER_MAX_BYTES = 64 * 1024
_END = b"\r\n\r\n"
_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def ready(buffer: bytes | bytearray, body_max: int = BODY_MAX) -> bool | None:
    """Whether what has arrived is a request a thread can serve without waiting on the client.

    True: hand it over (complete, or malformed in a way gunicorn refuses at once).
    False: wait for more. None: a head longer than HEAD_MAX (431).
    """
    end = buffer.find(_END)
    if end < 0:
        head = bytes(buffer)
        if head.count(b"\n") != head.count(b"\r\n"):  # a bare LF: gunicorn answers 400 at once
            return True
        return None if len(buffer) > HEAD_MAX else False
    if end + len(_END) > HEAD_MAX:
        return None
    lengths = []
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"expect" and b"100-continue" in value.lower()):
            return True  # the thread reads that body itself (bounded per read)
        if name == b"content-length":
            lengths.append(value.strip())
    if not lengths:
        return True
    if len(set(lengths)) != 1 or not (lengths[0].isdigit() and len(lengths[0]) <= 18):
        return True  # gunicorn refuses it
    declared = int(lengths[0])
    return declared > body_max or len(buffer) >= end + len(_END) + declared


class _Arrival:
    """What has arrived of a connection's next request, and until when the rest may take."""

    __slots__ = ("buffer", "deadline")

    def __init__(self, buffer: bytes, deadline: float) -> None:
        self.buffer = bytearray(buffer)
        self.deadline = deadline


class _Lingering:
    """A connection closing: until when the event loop drains it, and how much it drained."""

    __slots__ = ("deadline", "drained")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.drained = 0


# What a thread's handle() returns for a request not in yet: back to the event loop.
_MORE = object()
# ... and for a request the app parked: to the event loop until its check or deadline.
_PARKED = object()
# How often the waker asks the checks of parked requests.
WAKE_S = 0.1

# A check: of the keys of parked requests, those whose answer is due now.
Check = Callable[[Collection[Hashable]], Collection[Hashable]]


# A stream's poll: of the keys of streams, what to send each now (bytes; None: the stream ends,
# once the bytes sent before went out).
Poll = Callable[[Collection[Any]], dict[Any, bytes | None]]
# A stream's unsent bytes at most (a follower that reads slower is dropped), and how often an
# idle stream says it is alive (an SSE comment).
STREAM_BACKLOG_MAX = 256 * 1024
STREAM_PING_S = 15.0


@dataclass
class _Park:
    """A parked request: its bytes, what it waits for, and until when. A stream's (``poll``
    set) is answered bit by bit by the waker instead, from ``head`` on, until its deadline."""

    request: bytes
    key: Hashable
    check: Check | None
    deadline: float
    poll: Poll | None = None
    head: bytes = b""
    backlog: bytes = b""
    last_write: float = 0.0


class _ParkedSignal(BaseException):  # noqa: N818 - a signal, not an error
    """Out of the WSGI call of a request the app parked: not an Exception, so gunicorn's
    handlers let it through and write nothing (no 500, no access log line)."""


def _bound_blocking_io(sock: socket.socket, seconds: float) -> None:
    """Bound each blocking recv/send of a thread on this socket (the kernel's timeouts:
    gunicorn's setblocking(True) leaves them in place)."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _receive(sock: socket.socket, buffer: bytearray) -> tuple[bool, bool | None]:
    """Read what the (non-blocking) socket holds until the request is ready, mostly one recv;
    (peer gone, ready(buffer))."""
    while True:
        try:
            chunk = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return False, ready(buffer)
        except OSError:
            return True, ready(buffer)
        buffer += chunk
        verdict = ready(buffer)
        if not chunk or verdict is not False or len(chunk) < _RECV:
            # Not ready after a short read: the rest is not here yet (the event loop says when).
            return not chunk, verdict


class _WriteDeadline:
    """The socket a thread answers on: an answer the client has not taken within ``seconds`` of
    its first byte is abandoned (checked before each write; a write itself blocks for
    ``seconds`` at most, SO_SNDTIMEO), so a client that reads slowly holds the thread no
    longer. A small answer goes to the kernel's send buffer at once."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._seconds = seconds
        self._deadline: float | None = None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def send(self, data: Any) -> int:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._seconds
        elif now > self._deadline:
            raise TimeoutError("the client did not take the answer in time")
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HeadFirstWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn ``--worker-class buddo_deploy.serving.HeadFirstWorker`` (gunicorn_conf.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = api_request_timeout_s()
        # Connections in the event loop whose request has not arrived in full, and connections
        # closing (the event loop's alone).
        self.arriving: dict[Any, _Arrival] = {}
        self.lingering: dict[Any, _Lingering] = {}
        # Parked requests (the event loop adds and resumes them; the waker reads them).
        self.parked: dict[Any, _Park] = {}
        self._parked_lock = threading.Lock()
        self._waker: threading.Thread | None = None
        self._serving = threading.local()  # the connection a thread serves

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Any = getattr(self, "wsgi")  # noqa: B009 - gunicorn sets it untyped

        def parking_app(environ: dict[str, Any], start_response: Any) -> Any:
            conn = getattr(self._serving, "conn", None)
            if conn is None:  # TLS, HTTP/2: gthread's own handling, nothing parks
                return app(environ, start_response)
            if conn.__dict__.pop("buddo_resumed", False):
                environ["buddo.resumed"] = True
            else:
                environ["buddo.park"] = partial(self._park, conn)
                environ["buddo.stream"] = partial(self._stream, conn)
                environ["buddo.streams"] = self._stream_keys
            result = app(environ, start_response)
            if getattr(conn, "buddo_park", None) is not None:
                if hasattr(result, "close"):
                    result.close()
                raise _ParkedSignal
            return result

        self.wsgi = parking_app

    def _park(self, conn: Any, key: Hashable, check: Check, timeout_s: float) -> None:
        """environ["buddo.park"]: answer this request again when ``check`` has ``key`` or in ``timeout_s``."""
        conn.buddo_park = _Park(conn.buddo_request, key, check, time.monotonic() + timeout_s)

    def _stream(self, conn: Any, key: Any, poll: Poll, head: bytes, duration_s: float) -> None:
        """environ["buddo.stream"]: answer with ``head`` (status line, headers, a first part; the
        answer ends when the connection closes), then with what ``poll`` gives ``key`` each
        WAKE_S, for ``duration_s`` at most; no thread is held meanwhile."""
        conn.buddo_park = _Park(b"", key, None, time.monotonic() + duration_s, poll=poll, head=head)

    def _stream_keys(self) -> list[Any]:
        """environ["buddo.streams"]: the keys of this process's streams now (to bound them per caller)."""
        with self._parked_lock:
            return [park.key for park in self.parked.values() if park.poll is not None]

    def _stock(self, conn: Any) -> bool:
        return bool(self.cfg.is_ssl or self.cfg.http2_cleartext != "off" or conn.is_http2)

    def handle(self, conn: Any) -> Any:
        """In a thread: serve the request if it has arrived, else hand the connection back."""
        if self._stock(conn):
            self._serving.conn = None
            return super().handle(conn)
        arrival = getattr(conn, "buddo_arrival", None)
        if arrival is None:
            if not getattr(conn, "buddo_bounded", False):
                _bound_blocking_io(conn.sock, self.request_timeout)
                conn.buddo_bounded = True
            # A thread may have read ahead into this request (pipelining, a drained body).
            early = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
            arrival = conn.buddo_arrival = _Arrival(early, time.monotonic() + self.request_timeout)
        conn.sock.setblocking(False)
        try:
            closed, verdict = _receive(conn.sock, arrival.buffer)
            if verdict is None:
                with contextlib.suppress(OSError):  # best effort, never waiting on the client
                    conn.sock.send(_431)
                return False
        finally:
            conn.sock.setblocking(True)
        if verdict:
            conn.buddo_arrival = None
            conn.init()  # the parser of a new connection (HTTP/1 without TLS: reads nothing)
            conn.parser.unreader.take_buffered()  # a resumed request: read ahead once already
            conn.parser.unreader.unread(bytes(arrival.buffer))
            conn.buddo_request, conn.buddo_park = bytes(arrival.buffer), None
            raw, conn.sock = conn.sock, _WriteDeadline(conn.sock, self.request_timeout)
            self._serving.conn = conn
            try:
                return super().handle(conn)
            except _ParkedSignal:
                return _PARKED
            finally:
                conn.sock = raw
        return False if closed else _MORE

    def finish_request(self, conn: Any, fs: Any) -> None:
        """On the event loop: a request not in yet waits there for more, with its deadline; a
        connection to close lingers there (gthread would linger blocking the event loop)."""
        if fs.cancelled() or fs.exception() is not None:
            super().finish_request(conn, fs)
            return
        result = fs.result()
        if result is _MORE:
            arrival = conn.buddo_arrival
            if not self.alive or arrival.deadline <= time.monotonic():
                self._drop(conn, arrival)
                return
            conn.sock.setblocking(False)
            self.arriving[conn] = arrival
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        elif result is _PARKED:
            conn.sock.setblocking(False)
            park = conn.buddo_park
            with self._parked_lock:
                self.parked[conn] = park
                if park.poll is not None:
                    park.backlog, park.last_write = park.head, time.monotonic()
                    if not self._flush(conn, park):
                        self.parked.pop(conn, None)
                        self._drop_stream(conn)
                        return
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_parked_readable, conn))
            if self._waker is None:
                self._waker = threading.Thread(target=self._wake, name="buddo-waker", daemon=True)
                self._waker.start()
        elif result:
            super().finish_request(conn, fs)  # kept alive
        else:
            self._linger(conn)

    def _on_parked_readable(self, conn: Any, _sock: Any) -> None:
        """A parked connection the client closed is dropped; one that sent more (a pipelined
        request) is no longer watched: its turn comes after the parked answer."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        try:
            gone = not conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            gone = True
        if gone:
            with self._parked_lock:
                if self.parked.pop(conn, None) is None:
                    return  # answered or closed by now (the waker's or the event loop's own turn)
                self.nr_conns -= 1
                conn.close()

    def _wake(self) -> None:
        """The waker thread: every WAKE_S, the parked requests whose check or deadline has come."""
        while self.alive:
            time.sleep(WAKE_S)
            with self._parked_lock:
                parked = list(self.parked.items())
            if not parked:
                continue
            self._feed([(conn, park) for conn, park in parked if park.poll is not None])
            parked = [(conn, park) for conn, park in parked if park.poll is None]
            checks: dict[Check, set[Hashable]] = {}
            for _, park in parked:
                assert park.check is not None
                checks.setdefault(park.check, set()).add(park.key)
            ready: set[tuple[Check, Hashable]] = set()
            for check, keys in checks.items():
                try:
                    ready.update((check, key) for key in check(keys))
                except Exception:  # a check that fails answers at the deadline
                    self.log.exception("A parked request's check failed")
            now = time.monotonic()
            due = [conn for conn, park in parked if (park.check, park.key) in ready or park.deadline <= now]
            if due:
                self.method_queue.defer(self._resume, due)

    def _feed(self, streams: list[tuple[Any, _Park]]) -> None:
        """In the waker: what each stream's poll gives it, sent without blocking; a stream past
        its deadline, ended by its poll, or whose client does not keep up, is closed."""
        polls: dict[Poll, list[Any]] = {}
        for _, park in streams:
            assert park.poll is not None
            polls.setdefault(park.poll, []).append(park.key)
        out: dict[Any, bytes | None] = {}
        for poll, keys in polls.items():
            try:
                out.update(poll(keys))
            except Exception:  # a poll that fails sends nothing this time
                self.log.exception("A stream's poll failed")
        now = time.monotonic()
        ended = []
        with self._parked_lock:
            for conn, park in streams:
                if conn not in self.parked:
                    continue
                data = out.get(park.key, b"")
                if park.deadline <= now or (data is None and (not self._flush(conn, park) or not park.backlog)):
                    ended.append(conn)  # an end its poll said is kept until what it sent before went out
                    continue
                if data is None:
                    continue
                if not data and not park.backlog and now - park.last_write >= STREAM_PING_S:
                    data = b": ping\n\n"
                park.backlog += data
                if data:
                    park.last_write = now
                if not self._flush(conn, park):
                    ended.append(conn)
            for conn in ended:
                self.parked.pop(conn, None)
        if ended:
            self.method_queue.defer(self._close_streams, ended)

    @staticmethod
    def _flush(conn: Any, park: _Park) -> bool:
        """Send what the stream has not sent yet, without waiting; False: close it (the client
        is gone, or has not taken STREAM_BACKLOG_MAX)."""
        try:
            while park.backlog:
                sent = conn.sock.send(park.backlog)
                park.backlog = park.backlog[sent:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return False
        return len(park.backlog) <= STREAM_BACKLOG_MAX

    def _close_streams(self, conns: list[Any]) -> None:
        """On the event loop: the streams that ended close their connection (the answer's end)."""
        for conn in conns:
            self._drop_stream(conn)

    def _drop_stream(self, conn: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self._linger(conn)

    def _resume(self, conns: list[Any]) -> None:
        """On the event loop: serve parked requests again (they answer now)."""
        for conn in conns:
            with self._parked_lock:
                park = self.parked.pop(conn, None)
            if park is None:
                continue  # gone meanwhile
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            conn.buddo_resumed = True
            conn.buddo_arrival = _Arrival(park.request, time.monotonic() + self.request_timeout)
            self.enqueue_req(conn)

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        del self.arriving[conn]
        self.poller.unregister(conn.sock)
        self.enqueue_req(conn)

    def _drop(self, conn: Any, arrival: _Arrival) -> None:
        """A request that did not arrive in time (408) or a connection that sent none."""
        if arrival.buffer and self.alive:
            conn.sock.setblocking(False)
            with contextlib.suppress(OSError):  # best effort, never waiting on the client
                conn.sock.send(_408)
            self._linger(conn)
            return
        self.nr_conns -= 1
        conn.close()

    def _linger(self, conn: Any) -> None:
        """Close as RFC 9112 9.6 says (gunicorn's close_graceful), without blocking: send FIN,
        then read and drop what the peer still sends until it closes, for LINGER_S at most, so
        that unread request bytes do not make the kernel reset the connection (and truncate
        the answer)."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.sock.setblocking(False)
        self.lingering[conn] = _Lingering(time.monotonic() + LINGER_S)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering_readable, conn))

    def _on_lingering_readable(self, conn: Any, _sock: Any) -> None:
        lingering = self.lingering[conn]
        try:
            drained = len(conn.sock.recv(_RECV))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            drained = 0
        lingering.drained += drained
        if not drained or lingering.drained >= LINGER_MAX_BYTES:
            self._close_lingering(conn)

    def _close_lingering(self, conn: Any) -> None:
        del self.lingering[conn]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gthread's timeouts (called every turn of the event loop), then requests that are
        late and lingering closes that are done waiting."""
        super().murder_pending()
        now = time.monotonic()
        for conn, arrival in list(self.arriving.items()):
            if self.alive and arrival.deadline > now:
                continue
            del self.arriving[conn]
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            self._drop(conn, arrival)  # stopping: a request not yet in is not waited for
        for conn, lingering in list(self.lingering.items()):
            if lingering.deadline <= now or not self.alive:
                self._close_lingering(conn)
        if not self.alive and self.parked:
            with self._parked_lock:
                streams = [conn for conn, park in self.parked.items() if park.poll is not None]
                for conn in streams:
                    self.parked.pop(conn)
            self._close_streams(streams)
            self._resume(list(self.parked))  # stopping: parked requests answer now, streams end
