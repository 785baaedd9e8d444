"""When the API's gunicorn worker hands a request to a thread (serving.ready)."""

from __future__ import annotations

import pytest
from buddo_deploy.serving import BODY_MAX, HEAD_MAX, ready

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
