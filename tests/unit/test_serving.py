"""The API's gunicorn worker: when a thread serves a request (serving.ready), how long it writes one."""

from __future__ import annotations

import socket
import threading

import pytest
from buddo_deploy.serving import BODY_MAX, HEAD_MAX, _bound_blocking_io, _WriteDeadline, ready

GET = b"GET /api/deploy/tiers HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("buffer", "expected"), [
    (b"", False),
    (b"GET /api/deploy/tiers HTTP/1.1\r\nHost: x\r\n", False),  # the head goes on
    (b"GET /api/deploy/tiers HTTP/1.1\r", False),
    (GET, True),
    (GET + GET[:10], True),  # the next request (pipelined) is the thread's to read
    (b"GET / HTTP/1.1\nHost: x\n", True),  # bare LF: gunicorn refuses it at once
    (b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", False),  # the body goes on
    (b"POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nabcde", True),
    (b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", True),  # refused by gunicorn
    (b"POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", True),
    (b"POST /a HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (BODY_MAX + 1), True),  # 413 unread
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),  # read by the thread
    (b"POST /a HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n", True),  # waits for the 100
    (b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_MAX, None),  # 431
    (b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_MAX + b"\r\n\r\n", None),
])
def test_ready(buffer, expected):
    assert ready(buffer) is expected


def test_an_answer_the_client_takes_too_slowly_is_abandoned():
    """A client reading a trickle holds the thread writing to it for the timeout, not for as
    long as it likes (each write blocks the timeout at most, SO_SNDTIMEO)."""
    server, client = socket.socketpair()
    with server, client:
        for sock in (server, client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _bound_blocking_io(server, 0.2)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.05):
                client.recv(512)

        reader = threading.Thread(target=trickle)
        reader.start()
        try:
            answer = _WriteDeadline(server, 0.5)
            answer.sendall(b"small")
            with pytest.raises(OSError):
                answer.sendall(b"x" * 4_000_000)
        finally:
            stop.set()
            reader.join()
