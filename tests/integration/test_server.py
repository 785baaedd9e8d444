"""The real gunicorn server over HTTP: two API processes sharing one database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import JWT_SECRET, auth, create_body, free_port, postgres_url, reset_postgres, wait_until_up


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
        "BUDDO_SECRET_KEY": "k",
        "BUDDO_RATE_LIMIT_READ": "6",
        "BUDDO_RATE_LIMIT_WRITE": "8",
        # A window no test run can straddle, so counts never reset mid-test.
        "BUDDO_RATE_LIMIT_WINDOW": "86400",
        # A create pays its first cycle: balances these tests never run out of.
        "BUDDO_BILLING_STARTING_POINTS": "1000000000",
        "BUDDO_BILLING_STARTING_SATS": "1000000000000",
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
