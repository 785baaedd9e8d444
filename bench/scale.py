"""The API's reads and writes, a job claim and a health cycle, with N = 100, 1,000 and 10,000
deployments on ten hosts.

The fill, for each database and N:
- ten container hosts in an inventory of their own (memory for every deployment);
- one deployment created through the API, copied N - 1 times with the project's models
  (spread over the hosts, each with its own ports, one audit entry and one paid billing
  cycle each), all the same operator's;
- a job history of 10 x N finished converges (one target each) and N queued output reads;
- ANALYZE, as autovacuum would have run after so many rows.

Then, each timed as the median of --repeat rounds (a round: the mean of --calls calls):
- POST /apps (another operator each time: placement over every host's deployments),
- GET /apps (the first page, and one from the middle by its cursor), GET /status,
  GET /billing (a page), GET /logs (a page), all in process (Falcon's test client);
- one job claim (then put back);
- once, the database part of a health cycle of every host (engine.record_health with the
  probe reports a host would send: every deployment serving, 1% of them answering 500).
Each is printed with its ratio to N = 100 in the same run (issue 19's aims: the requests
within 1.5x at 10,000, the claim within 2x, the health cycle under 1 s), on SQLite and,
when BUDDO_TEST_POSTGRES_URL names a server (make bench-scale), on PostgreSQL in a
database of its own. The billing pass has its own bench (bench/billing.py).
Run: make bench-scale   (or .venv/bin/python bench/scale.py -n 100 -n 1000)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "api"))

from buddo_deploy import jobqueue  # noqa: E402
from buddo_deploy.app import create_app  # noqa: E402
from buddo_deploy.models import (  # noqa: E402
    AuditEntry,
    BillingCycle,
    Deployment,
    Job,
    JobTarget,
    Tier,
    database_proxy,
    utcnow,
)
from buddo_deploy.services import engine, state  # noqa: E402

from tests.helpers import (  # noqa: E402
    auth,
    create_body,
    create_deployment,
    create_session_database,
    drop_session_database,
    make_settings,
    migrate,
)

HOSTS = 10
OPERATOR = "bench-operator"
CHUNK = 500


def insert(model: Any, rows: list[dict[str, Any]]) -> None:
    with database_proxy.obj.atomic():
        for start in range(0, len(rows), CHUNK):
            model.insert_many(rows[start:start + CHUNK]).execute()


def inventory(root: Path) -> Path:
    path = root / "inventory"
    path.mkdir()
    hosts = "".join(f"    host-{i}:\n      ansible_connection: local\n      buddo_host_memory_mb: 100000000\n"
                    for i in range(HOSTS))
    (path / "hosts.yml").write_text(f"container_hosts:\n  hosts:\n{hosts}")
    return path


class Fill:
    """N deployments of one operator on ten hosts, with history, in process."""

    def __init__(self, backend: str, n: int, root: Path) -> None:
        settings = make_settings(root, backend, inventory=inventory(root), rate_limits_enabled=False,
                                 max_deployments_per_account=10 ** 9)
        migrate(settings)
        self.client = falcon.testing.TestClient(create_app(settings))
        first = Deployment.get_by_id(create_deployment(self.client, OPERATOR))
        self.ident = str(first.id)
        row = {field.name: getattr(first, field.name) for field in Deployment._meta.sorted_fields}
        entry = AuditEntry.select().where(AuditEntry.deployment == first.id).first()
        entry_row = {field.name: getattr(entry, field.name) for field in AuditEntry._meta.sorted_fields}
        cycle = BillingCycle.select().where(BillingCycle.deployment == first.id).first()
        cycle_row = {field.name: getattr(cycle, field.name) for field in BillingCycle._meta.sorted_fields
                     if field.name != "id"}
        start = first.inserted_at - dt.timedelta(days=365)
        deployments, entries, cycles = [], [], []
        for i in range(1, n):
            ident = uuid.uuid4()
            at = start + dt.timedelta(seconds=i)
            host, port = f"host-{i % HOSTS}", 20000 + 2 * (i // HOSTS)
            if host == first.host and port >= first.host_port:
                port += 2  # past the block the API placed the first one on (at random)
            deployments.append(row | {"id": ident, "subdomain": f"s{i}", "container_name": f"s{i}-{ident.hex[:6]}",
                                      "host": host, "host_port": port,
                                      "inserted_at": at, "updated_at": at})
            entries.append(entry_row | {"id": uuid.uuid4(), "deployment": ident, "inserted_at": at, "updated_at": at})
            cycles.append(cycle_row | {"deployment": ident, "starts_at": at, "created_at": at})
        insert(Deployment, deployments)
        insert(AuditEntry, entries)
        insert(BillingCycle, cycles)
        ids = [self.ident, *(str(d["id"]) for d in deployments)]
        self.history(ids, start)
        # The planners' statistics, as PostgreSQL's autovacuum (and a sysadmin's ANALYZE) keep them.
        database_proxy.obj.execute_sql("ANALYZE")
        # The middle of the list: a page reached by its cursor.
        page = self.client.simulate_get("/api/deploy/apps", params={"limit": n // 2 if n < 200 else 100},
                                         headers=auth(OPERATOR)).json
        self.cursor = page.get("next_cursor")
        self.serial = 0

    @staticmethod
    def history(ids: list[str], start: dt.datetime) -> None:
        """10 x N finished converges of a year, one target each; N queued output reads."""
        n = len(ids)
        jobs = [{"action": "converge", "lock_key": f"host-{i % HOSTS}", "state": "succeeded", "attempts": 1,
                 "timeout_s": 600, "run_after": start, "created_at": start + dt.timedelta(seconds=i),
                 "updated_at": start, "finished_at": start + dt.timedelta(seconds=i + 1), "host": f"host-{i % HOSTS}"}
                for i in range(10 * n)]
        before = Job.select(Job.id).order_by(Job.id.desc()).first().id
        insert(Job, jobs)
        first_id = before + 1
        insert(JobTarget, [{"job": first_id + i, "deployment": ids[i % n], "generation": 1, "state": "succeeded"}
                           for i in range(10 * n)])
        now = utcnow()
        insert(Job, [{"action": "output", "lock_key": f"output/{ident}", "deployment": ident, "state": "queued",
                      "timeout_s": 60, "run_after": now - dt.timedelta(seconds=1), "created_at": now,
                      "updated_at": now, "host": f"host-{i % HOSTS}"} for i, ident in enumerate(ids)])

    @staticmethod
    def serving() -> None:
        """Every deployment converged, serving and recorded healthy (as a health cycle finds them)."""
        Deployment.update(serving_port=Deployment.host_port, container_id=Deployment.container_name,
                          observed_generation=Deployment.generation, health_status="healthy", health_failures=0,
                          last_health_check=None).execute()

    @staticmethod
    def health_reports(changed_every: int) -> dict[str, dict[str, Any]]:
        """Each host's probe report: every container runs and answers, but one in ``changed_every``."""
        reports: dict[str, dict[str, Any]] = {}
        for i, d in enumerate(Deployment.select(Deployment, Tier).join(Tier)):
            report = reports.setdefault(d.host, {"containers": [], "probes": {}})
            report["containers"].append({"deployment_id": str(d.id), "id": d.container_id, "spec": state.spec_of(d),
                                         "state": "running"})
            report["probes"][d.container_id] = ({"healthy": False, "status": 500} if i % changed_every == 0
                                                else {"healthy": True, "status": 200})
        return reports

    def create(self) -> None:
        self.serial += 1
        resp = self.client.simulate_post("/api/deploy/apps", json=create_body(subdomain=f"new{self.serial}"),
                                         headers=auth(f"new-operator-{self.serial}"))
        assert resp.status_code == 201, resp.text

    def get(self, path: str, **params: Any) -> Callable[[], None]:
        def call() -> None:
            resp = self.client.simulate_get(path, params=params, headers=auth(OPERATOR))
            assert resp.status_code == 200, resp.text
        return call

    @staticmethod
    def claim() -> None:
        job = jobqueue.claim("bench", 60)
        assert job is not None
        Job.update(state="queued", attempts=0, lease_owner=None, lease_expires_at=None, started_at=None).where(
            Job.id == job.id).execute()


def timed(action: Callable[[], None], calls: int, repeat: int) -> float:
    action()  # warm
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        rounds.append((time.perf_counter() - started) / calls)
    return statistics.median(rounds)


def measure(backend: str, n: int, calls: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
        fill = Fill(backend, n, Path(root))
        d = fill.ident
        cases: dict[str, Callable[[], None]] = {
            "POST /apps": fill.create,
            "GET /apps (first page)": fill.get("/api/deploy/apps"),
            "GET /apps (a later page)": fill.get("/api/deploy/apps", cursor=fill.cursor),
            "GET /status": fill.get(f"/api/deploy/apps/{d}/status"),
            "GET /billing (a page)": fill.get("/api/deploy/billing"),
            "GET /logs (a page)": fill.get(f"/api/deploy/apps/{d}/logs"),
            "a job claim": fill.claim,
        }
        out = {name: timed(action, calls, repeat) for name, action in cases.items()}
        # A health cycle's database part, once (it records what changed): 1% answer 500.
        fill.serving()
        reports = fill.health_reports(100)
        started = time.perf_counter()
        for host, report in sorted(reports.items()):
            engine.record_health(host, report, engine.HealthPolicy())
        out["health cycle, DB part (1% changed)"] = time.perf_counter() - started
        database_proxy.obj.close()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, action="append", help="deployments (default 100, 1000 and 10000)")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = args.n or [100, 1000, 10000]
    backends = ["sqlite"] + (["postgres"] if os.environ.get("BUDDO_TEST_POSTGRES_URL") else [])
    for backend in backends:
        if backend == "postgres":
            create_session_database()
        try:
            results = {n: measure(backend, n, args.calls, args.repeat) for n in sizes}
        finally:
            if backend == "postgres":
                drop_session_database()
        print(f"\n{backend}: ms a call (ratio to N={sizes[0]})")
        print(f"{'':36}" + "".join(f"{'N=' + str(n):>20}" for n in sizes))
        for name in results[sizes[0]]:
            base = results[sizes[0]][name]
            cells = "".join(f"{results[n][name] * 1000:11.2f} ({results[n][name] / base:4.1f}x)" for n in sizes)
            print(f"{name:36}{cells}")


if __name__ == "__main__":
    main()
