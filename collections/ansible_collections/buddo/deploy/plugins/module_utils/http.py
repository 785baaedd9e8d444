"""One HTTP GET as the modules use it: no proxy, no redirects followed, any status an answer.

Every GET has one deadline for the whole exchange (connect, status line, headers, body),
whatever the other side does: an app that sends its answer a byte a second, never closes,
or sends an endless header fails its own check when the deadline passes, never later.
"""

from __future__ import annotations

import socket
import time
import urllib.parse

MAX_HEADER = 64 * 1024
MAX_BODY = 4 * 1024 * 1024


class _Late(Exception):
    """The deadline passed, or the answer outgrew its bound."""


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.closed = False

    def fill(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Late("no complete answer in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as exc:
            raise _Late("no complete answer in time") from exc
        if not chunk:
            self.closed = True
        self.buffer += chunk

    def until(self, marker: bytes, limit: int) -> bytes:
        while marker not in self.buffer:
            if len(self.buffer) > limit:
                raise _Late(f"more than {limit} bytes before {marker!r}")
            if self.closed:
                raise ConnectionError("connection closed mid-answer")
            self.fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size and not self.closed:
            self.fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self, limit: int) -> bytes:
        while not self.closed:
            if len(self.buffer) > limit:
                raise _Late(f"a body of more than {limit} bytes")
            self.fill()
        return self.buffer


def _body(reader: _Reader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(reader.until(b"\r\n", 1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return body
            if len(body) + size > MAX_BODY:
                raise _Late(f"a body of more than {MAX_BODY} bytes")
            body += reader.exactly(size)
            reader.until(b"\r\n", 2)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise _Late(f"a body of more than {MAX_BODY} bytes")
        return reader.exactly(length)
    return reader.rest(MAX_BODY)


def http_get(url: str, timeout: float, return_content: bool = False) -> tuple[int, str, str]:
    """(status, body, error); status -1 when no complete HTTP answer came back within ``timeout``
    seconds in all (refused, too slow, not HTTP)."""
    deadline = time.monotonic() + timeout
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return -1, "", f"unsupported URL {url!r} (plain http only)"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname
    port = parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=max(0.001, deadline - time.monotonic())) as sock:
            authority = f"[{host}]" if ":" in host else host
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {authority}:{port}\r\nUser-Agent: buddo-deploy\r\n"
                         f"Accept: */*\r\nConnection: close\r\n\r\n".encode())
            reader = _Reader(sock, deadline)
            head = reader.until(b"\r\n\r\n", MAX_HEADER).decode("iso-8859-1")
            status_line, _, header_text = head.partition("\r\n")
            version, _, rest = status_line.partition(" ")
            if not version.startswith("HTTP/") or not rest[:3].isdigit():
                return -1, "", "not an HTTP answer"
            status = int(rest[:3])
            if not return_content:
                return status, "", ""
            headers = {}
            for line in header_text.split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            return status, _body(reader, headers).decode("utf-8", "replace"), ""
    except _Late as exc:
        return -1, "", f"{exc} (deadline {timeout:g} s)"
    except (OSError, ValueError) as exc:
        return -1, "", str(exc) or exc.__class__.__name__
