"""module_utils.http: one deadline for the whole exchange, whatever the other side does."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))

from ansible_collections.buddo.deploy.plugins.module_utils.http import http_get  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """Accepts connections on a loopback port and answers each as ``behaviour`` says; counts
    what it sent, so a test can tell the client gave up before the server was done."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.sent = 0
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                if self.behaviour == "drip":  # the whole answer, a byte at a time, slowly
                    for byte in ANSWER * 50:
                        if self.stop.is_set():
                            return
                        conn.sendall(bytes([byte]))
                        self.sent += 1
                        time.sleep(0.05)
                elif self.behaviour == "endless-header":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    while not self.stop.is_set():
                        conn.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                        self.sent += 1
                        time.sleep(0.001)
                elif self.behaviour == "never-closes":  # headers, then a body that never comes
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx")
                    self.stop.wait(60)
                elif self.behaviour == "silent":
                    self.stop.wait(60)
                else:
                    conn.sendall(ANSWER)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    found = Server(request.param)
    yield found
    found.close()


@pytest.mark.parametrize("server", ["drip", "silent"], indirect=True)
def test_a_slow_app_gets_no_more_than_the_deadline(server: Server) -> None:
    status, _, error = http_get(f"http://127.0.0.1:{server.port}/", 0.5)
    assert status == -1 and "in time" in error, error
    assert server.behaviour == "silent" or server.sent < len(ANSWER)  # it gave up long before the app was done


@pytest.mark.parametrize("server", ["endless-header"], indirect=True)
def test_an_endless_header_is_cut_off(server: Server) -> None:
    status, _, error = http_get(f"http://127.0.0.1:{server.port}/", 5)
    assert status == -1 and "bytes before" in error, error


@pytest.mark.parametrize("server", ["never-closes"], indirect=True)
def test_a_body_that_never_ends_is_cut_off_when_it_is_read(server: Server) -> None:
    assert http_get(f"http://127.0.0.1:{server.port}/", 0.5) == (200, "", "")  # the status is the answer
    status, _, error = http_get(f"http://127.0.0.1:{server.port}/", 0.5, return_content=True)
    assert status == -1 and "in time" in error


@pytest.mark.parametrize("server", ["ok"], indirect=True)
def test_a_prompt_answer_is_read_whole(server: Server) -> None:
    assert http_get(f"http://127.0.0.1:{server.port}/x?y=1", 2, return_content=True) == (200, "ok", "")
    assert http_get("http://127.0.0.1:1/", 1)[0] == -1
