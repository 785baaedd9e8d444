"""A billing pass over an operator who cannot pay, at N = 100 and N = 1,000 deployments.

Each deployment is a copy of one created through the API (the project's own models), due
for its next cycle; the operator's balance is spent, so every cycle the pass starts stays
unpaid and each start tries to settle what the operator owes. The pass's time at 1,000 is
printed as a ratio to 100 in the same run (linear: about 10x), on SQLite and, when it is
reachable, on PostgreSQL (BUDDO_TEST_POSTGRES_URL, as `make test` sets it).
Aim (issue 19): within 10x of 100.
Run: make bench-billing   (or .venv/bin/python bench/billing.py -n 100 -n 1000)
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
from pathlib import Path

import falcon.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "api"))

from buddo_deploy.app import create_app  # noqa: E402
from buddo_deploy.models import BillingAccount, Deployment, Tier, database_proxy  # noqa: E402
from buddo_deploy.services.billing import Billing  # noqa: E402

from tests.helpers import (  # noqa: E402
    create_deployment,
    create_session_database,
    drop_session_database,
    make_settings,
    migrate,
)

CYCLE_S = 3600


def fill(backend: str, n: int, root: Path) -> tuple[Billing, dt.datetime]:
    """N deployments of one operator, each past its first (paid) cycle, the balance 0."""
    settings = make_settings(root, backend, billing_cycle_s=CYCLE_S, billing_grace_s=100 * CYCLE_S,
                             rate_limits_enabled=False)
    migrate(settings)
    client = falcon.testing.TestClient(create_app(settings))
    first = Deployment.get_by_id(create_deployment(client, "bench-operator"))
    row = {field.name: getattr(first, field.name) for field in Deployment._meta.sorted_fields}
    copies = []
    for i in range(1, n):
        ident = uuid.uuid4()
        copies.append(row | {"id": ident, "subdomain": f"b{i}", "container_name": f"b{i}-{ident.hex[:8]}",
                             "host_port": 40000 + i, "custom_domain": None})
    with database_proxy.obj.atomic():
        for start in range(0, len(copies), 200):
            Deployment.insert_many(copies[start:start + 200]).execute()
    BillingAccount.update(points_balance=0, sats_balance=0).execute()
    assert Tier.get_by_id(first.tier_id).monthly_cost_points, "a points tier"
    return Billing(settings), first.next_billing_at + dt.timedelta(seconds=1)


def one_pass(backend: str, n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-billing-") as root:
        billing, now = fill(backend, n, Path(root))
        started = time.perf_counter()
        report = billing.run_pass(now)
        elapsed = time.perf_counter() - started
        assert len(report.started) == n and not report.paid and not report.failed, report
        database_proxy.obj.close()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, action="append", help="deployments (default 100 and 1000)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = args.n or [100, 1000]
    backends = ["sqlite"] + (["postgres"] if os.environ.get("BUDDO_TEST_POSTGRES_URL") else [])
    for backend in backends:
        if backend == "postgres":
            create_session_database()  # a database of this run's own, as the tests have
        try:
            times = {n: statistics.median(one_pass(backend, n) for _ in range(args.repeat)) for n in sizes}
        finally:
            if backend == "postgres":
                drop_session_database()
        base = times[sizes[0]]
        for n in sizes:
            print(f"{backend:8} N={n:5}: pass {times[n]:7.3f} s  {times[n] / n * 1000:6.2f} ms a deployment  "
                  f"{times[n] / base:5.1f}x N={sizes[0]}")


if __name__ == "__main__":
    main()
