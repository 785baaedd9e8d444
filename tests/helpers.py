"""Test helpers: settings on SQLite or the real PostgreSQL, migrations, tokens, request bodies."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import psycopg2
import requests
from buddo_deploy.db import open_database
from buddo_deploy.migrations import upgrade
from buddo_deploy.services.tiers import sync_tiers
from buddo_deploy.settings import Settings
from standardwebhooks.webhooks import Webhook

# Every port a test's Caddy serves on this machine (and `make up`'s): there is one egress
# table per kernel and every bootstrap writes it, so each test inventory lets tenants reach
# all of them (tests/e2e/test_isolation.py checks a tenant reaches its stack's Caddy).
EGRESS_HOST_PORTS = [8080, 8443, 18080, 18443, 19080, 19180, 19443, 19543, 28080, 28443]
# ... and every admin port of those Caddys (only root may connect to them): the same one table.
CADDY_ADMIN_PORTS = [2019, 12019, 12020, 12021, 12029, 12119]

# `make test` installs and starts PostgreSQL and exports this; running pytest by
# hand without a server fails loudly rather than skipping.
SERVER_URL = os.environ.get("BUDDO_TEST_POSTGRES_URL", "postgresql://buddo:buddo@127.0.0.1:5432/buddo_test")
# Each test session works in a database of its own (created by the session fixture
# in conftest.py), so two test runs on one server never drop each other's schema.
SESSION_DATABASE = f"buddo_test_{os.getpid()}"


def postgres_url() -> str:
    return SERVER_URL.rsplit("/", 1)[0] + "/" + SESSION_DATABASE


def create_session_database() -> None:
    conn = psycopg2.connect(SERVER_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{SESSION_DATABASE}"')
        cur.execute(f'CREATE DATABASE "{SESSION_DATABASE}"')
    conn.close()


def drop_session_database() -> None:
    conn = psycopg2.connect(SERVER_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{SESSION_DATABASE}" WITH (FORCE)')
    conn.close()
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
# Caddy's on-demand TLS ask URL carries it (?token=).
ASK_SECRET = "test-ask-secret-3f9a1c7e"
# Whom the tests' tokens are for (production settings must name both): token() puts them in.
AUDIENCE = "buddo-deploy-test"
ISSUER = "https://auth.test.buddo"
PRODUCTION_AUTH = {"BUDDO_JWT_AUDIENCE": AUDIENCE, "BUDDO_JWT_ISSUER": ISSUER}


def reset_postgres(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    conn.close()


def make_settings(tmp_path: Path, backend: str, **overrides: Any) -> Settings:
    if backend == "postgres":
        url = postgres_url()
        reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'buddo.db'}"
    settings = Settings.from_env(
        {
            "BUDDO_VAR_DIR": str(tmp_path),
            "BUDDO_DATABASE_URL": url,
            "BUDDO_JWT_SECRET": JWT_SECRET,
            "BUDDO_SECRET_KEY": "test-encryption-passphrase",
            # A create is paid for up front (402 otherwise): balances no test that is not
            # about billing runs out of. Billing tests set their own.
            "BUDDO_BILLING_STARTING_POINTS": "1000000000",
            "BUDDO_BILLING_STARTING_SATS": "1000000000000",
            "BUDDO_ASK_SECRET": ASK_SECRET,
            **PRODUCTION_AUTH,
        }
    )
    return dataclasses.replace(settings, **overrides)


def migrate(settings: Settings) -> None:
    db = open_database(settings.database_url)
    upgrade(db)
    sync_tiers(settings.tiers_file)


def token(
    operator: str = "operator-1",
    *,
    scope: str | None = "deploy:manage",
    secret: str = JWT_SECRET,
    expires_in: float = 3600,
    **claims: Any,
) -> str:
    """An HS256 token for the tests' settings; a claim given as None is left out (e.g. ``aud=None``)."""
    now = dt.datetime.now(dt.UTC)
    body: dict[str, Any] = {"sub": operator, "iat": now, "exp": now + dt.timedelta(seconds=expires_in),
                            "scope": scope, "aud": AUDIENCE, "iss": ISSUER}
    body.update(claims)
    return jwt.encode({name: value for name, value in body.items() if value is not None}, secret, algorithm="HS256")


def auth(operator: str = "operator-1", **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(operator, **kwargs)}"}


def create_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subdomain": "my-app",
        "image": "harbor.buddo.xyz:4443/operators/my-app:latest",
        "tier": "buddo-starter",
    }
    body.update(overrides)
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def create_deployment(client: Any, operator: str = "operator-1", **body: Any) -> str:
    """POST /apps through a Falcon test client; the new deployment's id."""
    resp = client.simulate_post("/api/deploy/apps", json=create_body(**body), headers=auth(operator))
    assert resp.status_code == 201, resp.text
    return str(resp.json["deployment"]["id"])


def converged(plan: Any, ok: bool = True, **outcome: Any) -> Any:
    """What the converge playbook reports for each deployment of a plan (a PlaybookResult)."""
    from buddo_deploy.results import PlaybookResult

    outcomes = {}
    for item in plan.items:
        body = {"ok": ok, "state": item["state"], "drift": [], "generation": item["generation"], **outcome}
        if ok and item["state"] == "running":
            body.setdefault("container", {"id": f"c-{item['subdomain']}", "name": item["container_name"],
                                          "host_port": item["host_ports"][0], "image_digest": "sha256:abc"})
        outcomes[item["id"]] = body
    return PlaybookResult(status="successful", rc=0, stats={"buddo_outcomes": outcomes})


def digest(n: int) -> str:
    """A distinct image digest for each n."""
    return f"sha256:{n:064x}"


def ran(n: int) -> Any:
    """A converge result (for run_job) whose container runs the image with digest(n)."""
    def result(plan: Any) -> Any:
        item = plan.items[0]
        return converged(plan, container={"id": f"c{n}", "name": item["container_name"],
                                          "host_port": item["host_ports"][0], "image_digest": digest(n)})
    return result


def _counting(monkeypatch: Any, action: Callable[[], Any], wrap: Callable[[Any, list[int]], Any]) -> int:
    """Run ``action`` with every statement's cursor passed through ``wrap`` (which counts); the count.

    The occasional housekeeping a request does by chance (1 in 100: expired rate-limit windows,
    expired idempotency keys) is held off, so a count is the request's own."""
    import random

    from buddo_deploy.models import database_proxy

    monkeypatch.setattr(random, "random", lambda: 1.0)

    db, count, original = database_proxy.obj, [0], database_proxy.obj.execute_sql

    def counted(*args: Any, **kwargs: Any) -> Any:
        return wrap(original(*args, **kwargs), count)

    monkeypatch.setattr(db, "execute_sql", counted)
    try:
        action()
    finally:
        monkeypatch.setattr(db, "execute_sql", original)
    return count[0]


def _one_statement(cursor: Any, count: list[int]) -> Any:
    count[0] += 1
    return cursor


def count_statements(monkeypatch: Any, action: Callable[[], Any]) -> int:
    """How many SQL statements ``action`` runs."""
    return _counting(monkeypatch, action, _one_statement)


class _CountedCursor:
    """A DB-API cursor that counts the rows read from it."""

    def __init__(self, cursor: Any, rows: list[int]) -> None:
        self._cursor, self._rows = cursor, rows

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        self._rows[0] += row is not None
        return row

    def fetchmany(self, *args: Any) -> Any:
        rows = self._cursor.fetchmany(*args)
        self._rows[0] += len(rows)
        return rows

    def fetchall(self) -> Any:
        rows = self._cursor.fetchall()
        self._rows[0] += len(rows)
        return rows

    def __iter__(self) -> Any:
        for row in self._cursor:
            self._rows[0] += 1
            yield row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def count_rows(monkeypatch: Any, action: Callable[[], Any]) -> int:
    """How many rows the SQL statements ``action`` runs read."""
    return _counting(monkeypatch, action, _CountedCursor)


def run_job(settings: Settings, result_for: Any = converged, owner: str = "w") -> tuple[Any, Any]:
    """Claim the next job (a host's converge) and run it through the engine service with a made-up
    playbook result; (None, None) when nothing is queued."""
    from buddo_deploy import jobqueue
    from buddo_deploy.services import engine

    job = jobqueue.claim(owner, 30)
    if job is None:
        return None, None
    plan = engine.start_converge(job, owner, settings.secret_key)
    if plan is None:
        return job, None
    assert engine.finish(plan, owner, result_for(plan), 1.0)
    return job, plan


class Slowloris:
    """Connections that send a request head a byte every ``interval`` seconds and never finish it."""

    def __init__(self, base: str, count: int, interval: float = 0.2) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.socks = [socket.create_connection((host, int(port))) for _ in range(count)]
        for sock in self.socks:
            sock.sendall(b"GET /api/deploy/tiers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stop.wait(self.interval):
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"x")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


class Receiver:
    """A local HTTP endpoint that records what it is sent and answers ``status``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every body received, each checked by the reference verifier (raises if one fails)."""
        return [Webhook(secret).verify(r["body"], r["headers"]) for r in self.received]


def local_inventory(tmp_path: Path) -> Path:
    """An inventory of localhost alone, run by the interpreter running ansible-playbook."""
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                    "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n")
    return path
