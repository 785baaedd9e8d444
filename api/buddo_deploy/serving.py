"""The API's gunicorn worker: gthread, but a thread only for a request that has arrived.

gunicorn's gthread worker hands a connection to a thread as soon as it is readable, and
the thread reads the request with blocking reads: a client that sends its request
slowly (slowloris) holds a thread for as long as it likes, and a few such clients hold
them all. This worker reads each request in its main loop instead, without blocking,
and hands it to a thread only once its head is in, with its body when the head declares
a length up to the API's body limit. A request that has not arrived in full within
``BUDDO_API_REQUEST_TIMEOUT`` of its first byte (or of the connection, for the first
request) is answered 408 and the connection closed; a head over ``HEAD_MAX`` is 431.
Idle kept-alive connections wait in gunicorn's poller as before (``keepalive``).

What a thread still reads or writes itself (a chunked or ``Expect: 100-continue`` body,
a response the client does not read) is bounded per read and write by the same timeout
(``SO_RCVTIMEO``/``SO_SNDTIMEO``), so no client holds a thread indefinitely.

Everything here runs on the worker's main thread (``enqueue_req`` is only called there),
so the bookkeeping needs no lock. TLS and cleartext HTTP/2 (not used: Caddy terminates
TLS in front) fall back to gthread's own behaviour.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import time
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from .settings import MAX_BODY_BYTES, api_request_timeout_s

# The longest request head read here; the API's longest is a few kB (a JWT and the usual headers).
HEAD_MAX = 64 * 1024
# A declared body up to this is read before the request gets a thread: the API's own limit
# (a longer one is answered 413 from Content-Length, unread).
BODY_MAX = MAX_BODY_BYTES
_RECV = 64 * 1024
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

    __slots__ = ("buffer", "deadline", "registered")

    def __init__(self, buffer: bytes, deadline: float) -> None:
        self.buffer = bytearray(buffer)
        self.deadline = deadline
        self.registered = False


def _bound_blocking_io(sock: socket.socket, seconds: float) -> None:
    """Bound each blocking recv/send of a thread on this socket (the kernel's timeouts:
    gunicorn's setblocking(True) leaves them in place)."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class HeadFirstWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn ``--worker-class buddo_deploy.serving.HeadFirstWorker`` (gunicorn_conf.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = api_request_timeout_s()
        # Insertion order is deadline order: every deadline is "now + request_timeout".
        self.arriving: dict[Any, _Arrival] = {}

    def _stock(self) -> bool:
        return bool(self.cfg.is_ssl or self.cfg.http2_cleartext != "off")

    def enqueue_req(self, conn: Any) -> None:
        if self._stock() or conn.is_http2:
            super().enqueue_req(conn)
            return
        if not getattr(conn, "buddo_bounded", False):
            _bound_blocking_io(conn.sock, self.request_timeout)
            conn.buddo_bounded = True
        # A thread may have read ahead into the next request (pipelining, a drained body).
        early = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        self.arriving[conn] = _Arrival(early, time.monotonic() + self.request_timeout)
        self._advance(conn)

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        self._advance(conn)

    def _advance(self, conn: Any) -> None:
        arrival = self.arriving[conn]
        closed = self._receive(conn.sock, arrival.buffer)
        verdict = ready(arrival.buffer)
        if verdict:
            self._dispatch(conn, arrival)
        elif verdict is None:
            self._drop(conn, arrival, _431)
        elif closed:
            self._drop(conn, arrival)
        elif not arrival.registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            arrival.registered = True

    @staticmethod
    def _receive(sock: socket.socket, buffer: bytearray) -> bool:
        """Read what the socket holds (up to a head and a body's worth); True when the peer is gone."""
        while len(buffer) <= HEAD_MAX + BODY_MAX:
            try:
                chunk = sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            if not chunk:
                return True
            buffer += chunk
        return False

    def _unregister(self, conn: Any, arrival: _Arrival) -> None:
        del self.arriving[conn]
        if arrival.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)

    def _dispatch(self, conn: Any, arrival: _Arrival) -> None:
        self._unregister(conn, arrival)
        if conn.parser is None:
            conn.init()  # HTTP/1 without TLS: makes the parser, reads nothing
        conn.parser.unreader.unread(bytes(arrival.buffer))
        super().enqueue_req(conn)

    def _drop(self, conn: Any, arrival: _Arrival, answer: bytes | None = None) -> None:
        self._unregister(conn, arrival)
        if answer is not None:
            with contextlib.suppress(OSError):  # best effort: the socket is non-blocking
                conn.sock.send(answer)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gthread's timeouts (called every turn of the main loop), then requests that are late."""
        super().murder_pending()
        now = time.monotonic()
        for conn, arrival in list(self.arriving.items()):
            if self.alive and arrival.deadline > now:
                break
            # Stopping: a request not yet in is not waited for.
            self._drop(conn, arrival, _408 if arrival.buffer and self.alive else None)

