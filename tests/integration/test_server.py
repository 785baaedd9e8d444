"""The real gunicorn server over HTTP: two API processes sharing one database; slow clients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import (
    JWT_SECRET,
    PRODUCTION_AUTH,
    Slowloris,
    auth,
    create_body,
    free_port,
    postgres_url,
    reset_postgres,
    wait_until_up,
)


@pytest.fixture
def servers(tmp_path: Path, backend: str) -> Iterator[list[str]]:
    if backend == "postgres":
        url = postgres_url()
        reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'buddo.db'}"
    # Two container hosts with room for three btc-pro (1024 MB) deployments in all.
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "hosts.yml").write_text(
        "container_hosts:\n  hosts:\n"
        "    host-a: {buddo_host_memory_mb: 2048}\n    host-b: {buddo_host_memory_mb: 1024}\n")
    env = os.environ | {
        "BUDDO_INVENTORY": str(tmp_path / "inventory"),
        "BUDDO_VAR_DIR": str(tmp_path),
        "BUDDO_DATABASE_URL": url,
        "BUDDO_JWT_SECRET": JWT_SECRET,
        **PRODUCTION_AUTH,
        "BUDDO_SECRET_KEY": "k",
        "BUDDO_RATE_LIMIT_READ": "6",
        "BUDDO_RATE_LIMIT_WRITE": "8",
        # A window no test run can straddle, so counts never reset mid-test.
        "BUDDO_RATE_LIMIT_WINDOW": "86400",
        # A create pays its first cycle: balances these tests never run out of.
        "BUDDO_BILLING_STARTING_POINTS": "1000000000",
        "BUDDO_BILLING_STARTING_SATS": "1000000000000",
        "BUDDO_RATE_LIMIT_ANONYMOUS": "1000",
        "BUDDO_BILLING_WEBHOOK_SECRET": "webhook-secret",
    }
    subprocess.run([sys.executable, "-m", "buddo_deploy.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    procs, bases = [], []
    for _ in range(2):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "buddo_deploy.cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base, proc in zip(bases, procs, strict=True):
            wait_until_up(f"{base}/api/deploy/openapi.json", proc)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_lifecycle_over_http(servers):
    base = servers[0]
    created = requests.post(f"{base}/api/deploy/apps", json=create_body(), headers=auth(), timeout=5)
    assert created.status_code == 201
    assert created.headers["X-Request-Id"]
    ident = created.json()["deployment"]["id"]
    assert requests.get(f"{base}{created.headers['Location']}", headers=auth(), timeout=5).json()[
        "deployment"]["id"] == ident
    missing = requests.get(f"{base}/api/deploy/apps/00000000-0000-0000-0000-000000000000", headers=auth(),
                           timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "deployment_not_found"
    bad = requests.post(f"{base}/api/deploy/apps", data=b"{oops", headers=auth(), timeout=5)
    assert bad.status_code == 400 and "Traceback" not in bad.text


def test_rate_limit_holds_across_processes(servers):
    codes = [
        requests.get(f"{servers[i % 2]}/api/deploy/tiers", headers=auth("poller"), timeout=5).status_code
        for i in range(8)
    ]
    assert codes == [200] * 6 + [429] * 2


def test_subdomain_race_across_processes(servers):
    def create(i: int) -> int:
        resp = requests.post(f"{servers[i % 2]}/api/deploy/apps", json=create_body(subdomain="race"),
                             headers=auth(f"racer-{i}"), timeout=10)
        return resp.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = sorted(pool.map(create, range(8)))
    assert codes == [201] + [422] * 7


def test_concurrent_retries_with_one_idempotency_key_make_one_deployment(servers):
    """A client's create and its retries, sent at once to two API processes: one deployment,
    one 201 body for all of them (the retries wait for the first answer)."""
    headers = auth("retrier") | {"Idempotency-Key": "create-7f3a"}

    def create(i: int) -> requests.Response:
        return requests.post(f"{servers[i % 2]}/api/deploy/apps", json=create_body(subdomain="retried"),
                             headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(create, range(6)))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in answers) == [""] + ["true"] * 5
    listed = requests.get(f"{servers[0]}/api/deploy/apps", headers=auth("retrier"), timeout=5).json()
    assert [d["subdomain"] for d in listed["deployments"]] == ["retried"]


def test_tier_limit_holds_across_processes(servers):
    def create(i: int) -> int:
        resp = requests.post(f"{servers[i % 2]}/api/deploy/apps", json=create_body(subdomain=f"burst-{i}"),
                             headers=auth("bursty"), timeout=10)
        return resp.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = sorted(pool.map(create, range(8)))
    assert codes == [201] * 3 + [429] * 5  # buddo-starter allows 3


def _requests_counted(base: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{base}/metrics", timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "buddo_http_requests_total" and s.labels["endpoint"] == "/api/deploy/openapi.json")


def test_metrics_of_every_gunicorn_worker_add_up(servers, tmp_path: Path):
    """Two servers of two gunicorn workers each share var/metrics: any of them reports every request."""
    before = _requests_counted(servers[0])

    def get(i: int) -> int:
        return requests.get(f"{servers[i % 2]}/api/deploy/openapi.json", timeout=10).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(get, range(40))) == {200}
    assert _requests_counted(servers[1]) - before == 40
    assert _requests_counted(servers[0]) - before == 40
    # Counted by more than one process (each server's workers write files of their own).
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in (tmp_path / "metrics").glob("counter_*.db")}
    assert len(pids) >= 2

    # A gunicorn worker that dies (gunicorn's child_exit marks it dead) keeps its counts in the totals.
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{victim}").exists() and time.monotonic() < deadline:  # until gunicorn reaped it
        time.sleep(0.1)
    assert not Path(f"/proc/{victim}").exists()
    assert _requests_counted(servers[0]) - before == 40


def test_placement_never_overcommits_across_processes(servers):
    def create(i: int) -> tuple[int, str | None]:
        resp = requests.post(f"{servers[i % 2]}/api/deploy/apps",
                             json=create_body(subdomain=f"place-{i}", tier="btc-pro"),
                             headers=auth(f"placer-{i}"), timeout=10)
        body = resp.json()
        return resp.status_code, (body.get("deployment") or {}).get("host") or body["error"]["code"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = sorted(pool.map(create, range(8)))
    assert results == [(201, "host-a"), (201, "host-a"), (201, "host-b")] + [(503, "capacity_exhausted")] * 5


def _status_and_body(base: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (requests would refuse or re-encode them); the status and the body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


_GOOD_SIGNATURE = b"sha256=" + b"0" * 64
# One server for all of them: each value alone, and as a second header of the name.
_BAD_SIGNATURES = [
    "sha256=\u00e9".encode(), b"sha256=\xff\xfe" + b"a" * 62, "\u20ac".encode() * 30, b"", b"sha256=" + b"a" * 7000,
    b"SHA256=" + b"0" * 64, b"sha256=" + b"g" * 64, b"sha256=" + b"0" * 64 + b"\x80",
]
_BAD_AUTHORIZATIONS = [
    "Bearer \u00e9t\u00e9".encode(), b"Bearer \xff\xfe.\x80.\x81", b"Bearer " + b"a" * 7000, b"Bearer a.b.c",
    b"Bearer eyJhbGciOiJIUzI1NiJ9.W10.c2ln", "Bearer \u20ac.\u20ac.\u20ac".encode(), b"Bearer\t\xa0", b"\xa0",
]


def test_malformed_signatures_and_tokens_over_http_are_401_in_the_envelope(servers):
    for value in _BAD_SIGNATURES:
        for headers in ([value], [_GOOD_SIGNATURE, value]):
            status, answer = _payment(servers[0], headers)
            assert status == 401, (value, answer)
            assert json.loads(answer)["error"]["code"] == "invalid_signature"
    good = b"Bearer " + auth()["Authorization"].split()[1].encode()
    for value in _BAD_AUTHORIZATIONS:
        for headers in ([value], [good, value]):
            lines = b"".join(b"Authorization: " + h + b"\r\n" for h in headers)
            status, answer = _status_and_body(
                servers[1], b"GET /api/deploy/apps HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + lines + b"\r\n")
            assert status == 401, (value, answer)
            assert json.loads(answer)["error"]["code"] in {"invalid_token", "invalid_request"}


def test_headers_that_are_not_http_are_refused_by_gunicorn_before_the_api(servers):
    """Its own 400 or 431 (a plain page), never the API's 500, never a credit."""
    for value in (b"\x01\x02", b"sha256=" + b"0" * 9000):
        status, _ = _payment(servers[0], [value])
        assert status in {400, 431}, value


def _payment(base: str, signatures: list[bytes]) -> tuple[int, bytes]:
    body = b'{"operator_id": "x", "track": "bitcoin", "amount": 1, "reference": "r"}'
    lines = b"".join(b"X-Buddo-Signature: " + h + b"\r\n" for h in signatures)
    return _status_and_body(base, b"POST /api/deploy/billing/payments HTTP/1.1\r\nHost: t\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n" + lines +
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


# --- slow clients (serving.HeadFirstWorker) ----------------------------------------------

REQUEST_TIMEOUT_S = 2


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[str]:
    """One gunicorn of this checkout with fewer threads than the slow clients below, SQLite."""
    env = os.environ | {
        "BUDDO_VAR_DIR": str(tmp_path),
        "BUDDO_DATABASE_URL": f"sqlite:///{tmp_path / 'buddo.db'}",
        "BUDDO_JWT_SECRET": JWT_SECRET,
        "BUDDO_SECRET_KEY": "k",
        "BUDDO_API_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
        "BUDDO_RATE_LIMIT_WINDOW": "86400",  # counts no test run can see reset
        **PRODUCTION_AUTH,
        "BUDDO_BILLING_STARTING_POINTS": "1000000000",
        "BUDDO_BILLING_STARTING_SATS": "1000000000000",
    }
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "buddo_deploy.cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/api/deploy/openapi.json", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _raw(base: str, data: bytes, *pieces: bytes, pause: float = 0.3) -> bytes:
    """Send ``data`` then each piece after a pause; everything the server answers until it closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        for piece in pieces:
            time.sleep(pause)
            sock.sendall(piece)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_slow_clients_and_output_requests_leave_the_api_available(small_server, tmp_path: Path):
    """Six slow heads and three output requests against two threads: another operator's request
    is answered all the same (timings: bench/api.py), and the three requests queue one read."""
    created = requests.post(f"{small_server}/api/deploy/apps", json=create_body(), headers=auth(), timeout=10)
    assert created.status_code == 201, created.text
    url = f"{small_server}/api/deploy/apps/{created.json()['deployment']['id']}/output"
    slow = Slowloris(small_server, 6)
    try:
        time.sleep(0.5)
        with ThreadPoolExecutor(max_workers=3) as pool:
            outputs = [pool.submit(requests.get, url, params={"tail": "20"}, headers=auth(), timeout=30)
                       for _ in range(3)]
            tiers = requests.get(f"{small_server}/api/deploy/tiers", headers=auth("someone-else"), timeout=30)
            answers = [future.result() for future in outputs]
    finally:
        slow.close()
    assert tiers.status_code == 200
    # No worker runs: a read is queued (202) and every request joins it; one over the
    # operator's concurrency cap is 429 at once.
    codes = [resp.status_code for resp in answers]
    assert set(codes) <= {202, 429} and 202 in codes, [resp.text for resp in answers]
    with contextlib.closing(sqlite3.connect(tmp_path / "buddo.db")) as db:
        assert db.execute("SELECT count(*) FROM jobs WHERE action = 'output'").fetchone() == (1,)


def test_a_request_that_does_not_arrive_in_time_is_408(small_server):
    host, port = small_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S + 5) as partial, \
            socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S + 5) as idle:
        partial.sendall(b"GET /api/deploy/tiers HTTP/1.1\r\nHost: x\r\n")
        assert partial.recv(200).startswith(b"HTTP/1.1 408 ")
        assert idle.recv(200) == b""  # never sent a byte: closed without an answer


def test_clients_that_never_close_do_not_stall_the_event_loop(small_server):
    """gthread closes a "Connection: close" connection by waiting (up to 2 s) for the client to
    close too, on the worker's event loop; here it waits in the event loop without blocking it."""
    host, port = small_server.removeprefix("http://").split(":")
    stubborn = []
    try:
        for _ in range(10):  # 20 s of a blocked event loop, were each close waited for in turn
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /api/deploy/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            stubborn.append(sock)  # never reads, never closes
        time.sleep(0.5)
        for _ in range(3):
            assert requests.get(f"{small_server}/api/deploy/tiers", headers=auth(), timeout=5).status_code == 200
    finally:
        for sock in stubborn:
            sock.close()


def test_requests_in_pieces_pipelined_chunked_and_too_large(small_server):
    body = json.dumps(create_body(subdomain="pieces")).encode()
    head = (f"POST /api/deploy/apps HTTP/1.1\r\nHost: x\r\nAuthorization: {auth()['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    answer = _raw(small_server, head[:20], head[20:60], head[60:] + body[:10], body[10:])
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]

    get = b"GET /api/deploy/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = _raw(small_server, get + get.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert answer.count(b"HTTP/1.1 200 OK") == 2

    def chunks() -> Iterator[bytes]:
        yield json.dumps(create_body(subdomain="chunked")).encode()

    # A chunked body is read by the thread itself; answered (Falcon reads no body without a
    # Content-Length, so the API finds none), never left waiting.
    resp = requests.post(f"{small_server}/api/deploy/apps", data=chunks(), timeout=10,
                         headers=auth() | {"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed_json"

    with requests.Session() as session:  # kept alive between requests
        codes = [session.get(f"{small_server}/api/deploy/tiers", headers=auth(), timeout=5).status_code
                 for _ in range(3)]
    assert codes == [200] * 3

    huge = b"GET /api/deploy/tiers HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _raw(small_server, huge).startswith(b"HTTP/1.1 431 ")


def test_status_waits_hold_no_thread_and_answer_when_the_status_is_reached(small_server, tmp_path: Path):
    """Eight waits parked against two threads: another operator's request is answered while
    they all wait; a status change answers each of them once (counted once each), a client
    that leaves is dropped, and a wait that is not met answers at its timeout."""
    created = requests.post(f"{small_server}/api/deploy/apps", json=create_body(), headers=auth(), timeout=10)
    assert created.status_code == 201, created.text
    ident = created.json()["deployment"]["id"]
    url = f"{small_server}/api/deploy/apps/{ident}/status"
    before = requests.get(url, headers=auth(), timeout=10)
    assert before.json()["status"] == "pending" and "Wait-Result" not in before.headers
    remaining = int(before.headers["RateLimit-Remaining"])

    leaving = socket.create_connection(("127.0.0.1", int(small_server.rsplit(":", 1)[1])), timeout=10)
    leaving.sendall(f"GET /api/deploy/apps/{ident}/status?wait_for=running HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {auth()['Authorization']}\r\n\r\n".encode())
    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = [pool.submit(requests.get, url, params={"wait_for": "running,failed", "timeout": "60"},
                             headers=auth(), timeout=90) for _ in range(8)]
        time.sleep(1.0)
        leaving.close()
        tiers = requests.get(f"{small_server}/api/deploy/tiers", headers=auth("someone-else"), timeout=30)
        assert tiers.status_code == 200
        assert not any(wait.done() for wait in waits)  # all still waiting, none holding a thread
        with contextlib.closing(sqlite3.connect(tmp_path / "buddo.db")) as db, db:
            db.execute("UPDATE deployments SET status = 'running' WHERE id = ?", (ident,))
        answers = [wait.result() for wait in waits]
    assert {(a.status_code, a.headers["Wait-Result"], a.json()["status"]) for a in answers} == {
        (200, "reached", "running")}
    after = requests.get(url, headers=auth(), timeout=10)
    # Counted once each: the first poll, eight waits, the one that left, this poll.
    assert int(after.headers["RateLimit-Remaining"]) == remaining - 10

    timed_out = requests.get(url, params={"wait_for": "stopped", "timeout": "1"}, headers=auth(), timeout=30)
    assert (timed_out.status_code, timed_out.headers["Wait-Result"], timed_out.json()["status"]) == (
        200, "timeout", "running")
    bad = requests.get(url, params={"wait_for": "running,asleep"}, headers=auth(), timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "wait_for", bad.text


def _sse(url: str, headers: dict[str, str], events: list[str], stop: threading.Event) -> requests.Response:
    """Read a follow stream into ``events`` (each event's data) until ``stop``; its response."""
    resp = requests.get(url, params={"follow": "true"}, headers=headers, stream=True, timeout=30)
    if resp.status_code == 200:
        for line in resp.iter_lines(chunk_size=1):
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:])["text"])
            if stop.is_set():
                break
    resp.close()
    return resp


def test_output_followers_hold_no_thread_and_get_each_line(small_server, tmp_path: Path):
    """Ten followers against two threads: another operator's request is answered while they
    follow; a line written is in every stream; an eleventh follower of the operator is 429; a
    follower that reconnects with Last-Event-ID gets what it missed."""
    created = requests.post(f"{small_server}/api/deploy/apps", json=create_body(), headers=auth(), timeout=10)
    ident = created.json()["deployment"]["id"]
    url = f"{small_server}/api/deploy/apps/{ident}/output"
    stop = threading.Event()
    streams: list[list[str]] = [[] for _ in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        followers = [pool.submit(_sse, url, auth(), events, stop) for events in streams]
        time.sleep(1.5)
        over = requests.get(url, params={"follow": "true"}, headers=auth(), timeout=10)
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_followers"
        tiers = requests.get(f"{small_server}/api/deploy/tiers", headers=auth("someone-else"), timeout=10)
        assert tiers.status_code == 200
        with contextlib.closing(sqlite3.connect(tmp_path / "buddo.db")) as db, db:
            follows = db.execute("SELECT count(*) FROM output_follows WHERE deployment_id = ?", (ident,)).fetchone()
            assert follows == (1,)
            db.executemany("INSERT INTO output_lines (subject_id, at, stream, text, container, created_at) "
                           "VALUES (?, ?, 'stdout', ?, 'c1', ?)",
                           [(ident, f"2026-12-06T10:00:0{i}Z", f"line {i}", "2026-12-06 10:00:00") for i in (1, 2)])
        deadline = time.monotonic() + 10
        while any(len(events) < 2 for events in streams) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        with contextlib.closing(sqlite3.connect(tmp_path / "buddo.db")) as db, db:  # wakes each reader to stop
            db.execute("INSERT INTO output_lines (subject_id, at, stream, text, container, created_at) "
                       "VALUES (?, '2026-12-06T10:00:09Z', 'stdout', 'bye', 'c1', '2026-12-06 10:00:00')", (ident,))
        assert all(f.result().status_code == 200 for f in followers)
    assert all(events[:2] == ["line 1", "line 2"] for events in streams), streams
    # A reconnect after the first line gets the rest.
    with contextlib.closing(sqlite3.connect(tmp_path / "buddo.db")) as db:
        first = db.execute("SELECT min(id) FROM output_lines").fetchone()[0]
    resumed: list[str] = []
    again = threading.Event()
    reader = threading.Thread(target=_sse, args=(url, auth() | {"Last-Event-ID": str(first)}, resumed, again))
    reader.start()
    deadline = time.monotonic() + 10
    while len(resumed) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    again.set()
    with contextlib.closing(sqlite3.connect(tmp_path / "buddo.db")) as db, db:
        db.execute("INSERT INTO output_lines (subject_id, at, stream, text, container, created_at) "
                   "VALUES (?, '2026-12-06T10:00:10Z', 'stdout', 'end', 'c1', '2026-12-06 10:00:00')", (ident,))
    reader.join(timeout=10)
    assert resumed[:2] == ["line 2", "bye"]
