"""Billing: the create pays its first cycle (402 otherwise), cycles on an injected clock, lapse and suspension,
debt that survives a destroy, credits and reactivation, the webhook, GET."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon.testing
import peewee
import pytest
from buddo_deploy.app import create_app
from buddo_deploy.db import write_transaction
from buddo_deploy.models import (
    AuditEntry,
    BillingAccount,
    BillingCycle,
    Deployment,
    Job,
    LedgerEntry,
    database_proxy,
    utcnow,
)
from buddo_deploy.services import billing as billing_service
from buddo_deploy.services.billing import Billing, PassReport
from buddo_deploy.settings import Settings

from tests.helpers import auth, count_rows, count_statements, create_body, create_deployment, make_settings, migrate

SECRET = "webhook-test-secret"
CYCLE = 100  # seconds
GRACE = 30


class Clock:
    """The injected clock: starts at the real now (creation uses it), moves only when told."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@dataclass
class Env:
    client: falcon.testing.TestClient
    settings: Settings
    clock: Clock
    billing: Billing

    def create(self, operator: str = "operator-1", **body: Any) -> Deployment:
        d = Deployment.get_by_id(create_deployment(self.client, operator, **body))
        self.clock.now = max(self.clock.now, d.inserted_at)  # the clock never runs behind a creation
        return d

    def post_create(self, operator: str = "operator-1", **body: Any) -> falcon.testing.Result:
        return self.client.simulate_post("/api/deploy/apps", json=create_body(**body), headers=auth(operator))

    def run(self) -> Any:
        return self.billing.run_pass()

    def account(self, operator: str = "operator-1") -> tuple[int, int]:
        a = BillingAccount.get_by_id(operator)
        return a.points_balance, a.sats_balance

    def pay(self, body: dict[str, Any] | bytes, signature: str | None = None) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        headers["X-Buddo-Signature"] = signature if signature is not None else sign(raw)
        return self.client.simulate_post("/api/deploy/billing/payments", body=raw, headers=headers)


def sign(raw: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@pytest.fixture
def make_env(tmp_path: Path, backend: str) -> Iterator[Callable[..., Env]]:
    def build(**overrides: Any) -> Env:
        values: dict[str, Any] = {
            "billing_cycle_s": CYCLE, "billing_grace_s": GRACE, "billing_webhook_secret": SECRET,
            "billing_starting_points": 0, "billing_starting_sats": 0, "rate_limits_enabled": False,
        } | overrides
        settings = make_settings(tmp_path, backend, **values)
        migrate(settings)
        clock = Clock()
        return Env(falcon.testing.TestClient(create_app(settings)), settings, clock, Billing(settings, clock))

    yield build
    if database_proxy.obj is not None:
        database_proxy.obj.close()


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env(billing_starting_points=2000)


def ledger(operator: str = "operator-1") -> list[tuple[str, int, int | None]]:
    return [(e.kind, e.amount, e.cycle) for e in
            LedgerEntry.select().where(LedgerEntry.operator_id == operator).order_by(LedgerEntry.id)]


def audits(d: Deployment, action: str) -> list[AuditEntry]:
    return list(AuditEntry.select().where((AuditEntry.deployment == d.id) & (AuditEntry.action == action)))


# --- the cycle ---------------------------------------------------------------


def test_first_cycle_is_charged_by_the_create_with_its_stipend(env):
    d = env.create()  # buddo-starter: 500 points a cycle, 50 points stipend
    # Charged in the create's own transaction, before any billing pass ran.
    assert env.account() == (2000 - 500 + 50, 0)
    assert ledger() == [("adjustment", 2000, None), ("charge", -500, 0), ("stipend", 50, 0)]
    assert all(e.deployment_id == d.id and e.created_at == d.inserted_at
               for e in LedgerEntry.select().where(LedgerEntry.kind != "adjustment"))
    [cycle] = BillingCycle.select()
    assert (cycle.cycle, cycle.state, cycle.starts_at, cycle.amount) == (0, "paid", d.inserted_at, 500)
    assert d.next_billing_at == d.inserted_at + dt.timedelta(seconds=CYCLE)
    assert d.billing_status == "active" and d.billing_cycle == 1
    assert env.run().started == []  # nothing due until the next cycle's start
    body = env.client.simulate_get(f"/api/deploy/apps/{d.id}", headers=auth()).json["deployment"]
    assert body["billing_status"] == "active" and body["status"] == "pending"


def test_each_cycle_starts_at_its_anchor_and_is_charged_once(env):
    d = env.create()
    env.run()
    env.clock.advance(CYCLE - 1)
    assert env.run().started == []
    env.clock.advance(1)
    assert env.run().started == [(str(d.id), 1)]
    assert env.run().started == []
    after = Deployment.get_by_id(d.id)
    # Anchored at creation: cycle n starts at inserted_at + n * cycle, however late the pass runs.
    assert after.next_billing_at == d.inserted_at + 2 * dt.timedelta(seconds=CYCLE)
    assert env.account() == (2000 - 2 * 450, 0)


def test_a_clock_that_was_down_charges_every_missed_cycle_once(env):
    d = env.create()
    env.clock.advance(3.5 * CYCLE)
    report = env.run()
    assert report.started == [(str(d.id), n) for n in range(1, 4)]  # cycle 0: the create
    assert env.run().started == []
    assert [c.starts_at for c in BillingCycle.select().order_by(BillingCycle.cycle)] == [
        d.inserted_at + n * dt.timedelta(seconds=CYCLE) for n in range(4)]
    assert env.account() == (2000 - 4 * 450, 0)
    assert Deployment.get_by_id(d.id).next_billing_at == d.inserted_at + 4 * dt.timedelta(seconds=CYCLE)


def test_bitcoin_tiers_charge_sats_and_pay_a_points_stipend(make_env):
    env = make_env(billing_starting_sats=100_000)
    env.create(tier="btc-starter")  # 25000 sats, 150 points stipend
    env.run()
    assert env.account() == (150, 75_000)
    assert [(e.kind, e.track, e.amount) for e in LedgerEntry.select().order_by(LedgerEntry.id)][1:] == [
        ("charge", "bitcoin", -25_000), ("stipend", "buddo_points", 150)]


def test_billing_disabled_charges_nothing(make_env):
    env = make_env(billing_enabled=False)  # nothing to pay with, nothing asked
    d = env.create()
    assert LedgerEntry.select().count() == 0
    env.clock.advance(5 * CYCLE)
    assert env.run().started == []
    assert BillingCycle.select().count() == 0
    assert Deployment.get_by_id(d.id).billing_status == "active"


# --- lapse, suspension, reactivation -------------------------------------------------


def lapsed(make_env: Callable[..., Env]) -> tuple[Env, Deployment]:
    """Cycle 0 paid (600 - 500 + 50 = 150 left), cycle 1 unpaid: past_due."""
    env = make_env(billing_starting_points=600)
    d = env.create()
    env.run()
    env.clock.advance(CYCLE)
    env.run()
    return env, Deployment.get_by_id(d.id)


def test_an_unpaid_cycle_makes_the_deployment_past_due(make_env):
    env, d = lapsed(make_env)
    assert d.billing_status == "past_due" and d.desired_state == "running"
    assert env.account() == (150, 0)
    assert ledger() == [("adjustment", 600, None), ("charge", -500, 0), ("stipend", 50, 0)]
    [unpaid] = BillingCycle.select().where(BillingCycle.state == "unpaid")
    assert (unpaid.cycle, unpaid.amount) == (1, 500)


def test_suspended_when_the_grace_ends_unpaid(make_env):
    env, d = lapsed(make_env)
    env.clock.advance(GRACE - 1)
    assert env.run().suspended == []
    env.clock.advance(1)
    assert env.run().suspended == [str(d.id)]
    after = Deployment.get_by_id(d.id)
    assert (after.billing_status, after.status, after.desired_state) == ("suspended", "stopped", "stopped")
    assert after.generation == d.generation + 1
    [entry] = audits(d, "suspend")
    details = json.loads(entry.details)
    assert entry.initiated_by is None and entry.status == "pending"  # completes when the engine stopped it
    assert details["reason"] == "payment_lapsed" and details["cycle"] == 1 and "grace" in details["message"]
    assert entry.job_id is not None
    env.clock.advance(5 * CYCLE)
    assert env.run().started == []  # no cycle starts while suspended
    assert BillingCycle.select().count() == 2


def test_a_clock_down_past_the_grace_suspends_before_the_next_cycle(make_env):
    env = make_env(billing_starting_points=600)
    d = env.create()
    env.clock.advance(3 * CYCLE)
    report = env.run()
    # cycle 0 paid by the create, cycle 1 unpaid, its grace ended before cycle 2 would start: suspended there.
    assert report.started == [(str(d.id), 1)] and report.suspended == [str(d.id)]


def test_a_credit_settles_oldest_first_and_reactivates(make_env):
    env, d = lapsed(make_env)
    env.clock.advance(GRACE)
    env.run()
    env.clock.advance(7)
    credit = env.billing.credit("operator-1", "buddo_points", 1000, "pay-1", source="test")
    assert not credit.replayed and credit.settled == [(str(d.id), 1)] and credit.reactivated == [str(d.id)]
    assert (credit.points_balance, credit.sats_balance) == (150 + 1000 - 500 + 50, 0)
    after = Deployment.get_by_id(d.id)
    assert (after.billing_status, after.desired_state, after.status) == ("active", "running", "deploying")
    # The settled cycle covers the time from the reactivation: suspended time is not billed.
    assert after.next_billing_at == env.clock.now + dt.timedelta(seconds=CYCLE)
    [entry] = audits(d, "reactivate")
    assert entry.initiated_by is None and json.loads(entry.details)["reference"] == "pay-1"
    assert ledger()[-3:] == [("credit", 1000, None), ("charge", -500, 1), ("stipend", 50, 1)]
    assert env.run().started == []


def test_a_credit_within_the_grace_makes_it_active_again_without_a_restart(make_env):
    env, d = lapsed(make_env)
    credit = env.billing.credit("operator-1", "buddo_points", 400, "pay-1", source="test")
    assert credit.settled == [(str(d.id), 1)] and credit.reactivated == []
    after = Deployment.get_by_id(d.id)
    assert after.billing_status == "active" and after.generation == d.generation
    assert after.next_billing_at == d.next_billing_at  # it ran all along: same anchor
    assert audits(d, "reactivate") == []


def test_a_short_credit_pays_nothing_out_of_order(make_env):
    # buddo-pro (2000, stipend 200) then buddo-starter (500, stipend 50): 250 points left.
    env = make_env(billing_starting_points=2500)
    old = env.create(subdomain="old", tier="buddo-pro")
    env.clock.advance(1)
    new = env.create(subdomain="new")
    env.clock.now = new.inserted_at + dt.timedelta(seconds=CYCLE)
    env.run()  # both cycles 1 unpaid: old owes 2000, new 500
    assert {d.billing_status for d in Deployment.select()} == {"past_due"}
    credit = env.billing.credit("operator-1", "buddo_points", 300, "p1", source="test")
    assert credit.settled == []  # 550 would pay the newer one, but the older is first in line
    credit = env.billing.credit("operator-1", "buddo_points", 1500, "p2", source="test")
    assert credit.settled == [(str(old.id), 1)]
    assert Deployment.get_by_id(old.id).billing_status == "active"
    assert Deployment.get_by_id(new.id).billing_status == "past_due"
    assert env.account() == (2050 - 2000 + 200, 0)


def test_a_stipend_paid_on_the_way_pays_a_cycle_it_had_to_pass_over(make_env):
    # buddo-starter (500 points, stipend 50), then btc-starter (25000 sats, stipend 150): 350 points, 0 sats.
    env = make_env(billing_starting_points=650, billing_starting_sats=25_000)
    points = env.create(subdomain="points")
    env.clock.advance(1)
    sats = env.create(subdomain="sats", tier="btc-starter")
    env.clock.now = sats.inserted_at + dt.timedelta(seconds=CYCLE)
    env.run()
    assert {d.billing_status for d in Deployment.select()} == {"past_due"}
    credit = env.billing.credit("operator-1", "bitcoin", 25_000, "p1", source="test")
    # The sats cycle's stipend brings the points to 500: the older points cycle is paid too.
    assert credit.settled == [(str(sats.id), 1), (str(points.id), 1)]
    assert {d.billing_status for d in Deployment.select()} == {"active"}
    assert env.account() == (350 + 150 - 500 + 50, 0)


def test_restarting_a_suspended_deployment_waits_for_payment(make_env):
    env, d = lapsed(make_env)
    env.clock.advance(GRACE)
    env.run()
    resp = env.client.simulate_post(f"/api/deploy/apps/{d.id}/restart", headers=auth())
    assert resp.status_code == 422 and resp.json["error"]["code"] == "deployment_suspended"
    assert Deployment.get_by_id(d.id).desired_state == "stopped"


def test_an_operator_stop_of_a_suspended_deployment_is_not_undone_by_a_payment(make_env):
    env, d = lapsed(make_env)
    env.clock.advance(GRACE)
    env.run()
    resp = env.client.simulate_post(f"/api/deploy/apps/{d.id}/stop", headers=auth())
    assert resp.status_code == 200 and resp.json["deployment"]["billing_status"] == "past_due"
    assert [e.initiated_by for e in audits(d, "stop")] == ["operator-1"]
    credit = env.billing.credit("operator-1", "buddo_points", 1000, "p1", source="test")
    assert credit.settled == [(str(d.id), 1)] and credit.reactivated == []
    after = Deployment.get_by_id(d.id)
    assert (after.billing_status, after.desired_state) == ("active", "stopped")
    assert audits(d, "reactivate") == []


# --- stop and destroy ----------------------------------------------------------


def test_no_cycle_starts_while_stopped_and_a_restart_within_the_paid_cycle_keeps_the_anchor(env):
    d = env.create()
    env.run()
    assert env.client.simulate_post(f"/api/deploy/apps/{d.id}/stop", headers=auth()).status_code == 200
    env.clock.advance(4 * CYCLE)
    assert env.run().started == []
    assert env.client.simulate_post(f"/api/deploy/apps/{d.id}/restart", headers=auth()).status_code == 200
    after = Deployment.get_by_id(d.id)
    assert after.next_billing_at == d.inserted_at + dt.timedelta(seconds=CYCLE)


def test_a_restart_after_the_paid_cycle_ran_out_starts_a_new_cycle(env):
    d = env.create()
    env.run()
    env.client.simulate_post(f"/api/deploy/apps/{d.id}/stop", headers=auth())
    # The paid cycle ended long ago while it was stopped.
    Deployment.update(next_billing_at=utcnow() - dt.timedelta(days=90)).where(Deployment.id == d.id).execute()
    before = utcnow()
    env.client.simulate_post(f"/api/deploy/apps/{d.id}/restart", headers=auth())
    anchor = Deployment.get_by_id(d.id).next_billing_at
    assert before <= anchor <= utcnow()
    env.clock.now = anchor
    assert env.run().started == [(str(d.id), 1)]  # one charge for the new cycle; nothing for the gap
    assert [c.starts_at for c in BillingCycle.select().where(BillingCycle.cycle == 1)] == [anchor]
    assert env.account() == (2000 - 2 * 450, 0)


def test_destroy_keeps_the_charge_of_the_cycle_it_started(env):
    d = env.create()
    entries = ledger()
    assert env.client.simulate_delete(f"/api/deploy/apps/{d.id}", headers=auth()).status_code == 200
    assert Deployment.get_by_id(d.id).billing_status == "cancelled"
    assert ledger() == entries == [("adjustment", 2000, None), ("charge", -500, 0), ("stipend", 50, 0)]
    assert [c.state for c in BillingCycle.select()] == ["paid"]  # nothing prorated, refunded or waived
    env.clock.advance(10 * CYCLE)
    assert env.run().started == []  # and nothing more is charged
    assert env.account() == (1550, 0)


def test_destroy_ends_billing_but_what_was_owed_stays_owed(make_env):
    env, d = lapsed(make_env)
    assert env.client.simulate_delete(f"/api/deploy/apps/{d.id}", headers=auth()).status_code == 200
    after = Deployment.get_by_id(d.id)
    assert after.billing_status == "cancelled"
    assert [c.state for c in BillingCycle.select().order_by(BillingCycle.cycle)] == ["paid", "unpaid"]
    env.clock.advance(10 * CYCLE)
    assert env.run().started == [] and env.run().suspended == []
    debt = env.client.simulate_get("/api/deploy/billing", headers=auth()).json["debt"]
    assert (debt["buddo_points"], debt["bitcoin"]) == (500, 0)
    assert [(c["deployment_id"], c["cycle"], c["billing_status"]) for c in debt["cycles"]] == [
        (str(d.id), 1, "cancelled")]
    # The next credit pays it first (with its stipend: the cycle was served), and nothing restarts.
    credit = env.billing.credit("operator-1", "buddo_points", 1000, "p1", source="test")
    assert credit.settled == [(str(d.id), 1)] and credit.reactivated == []
    assert credit.points_balance == 150 + 1000 - 500 + 50
    assert ledger()[-3:] == [("credit", 1000, None), ("charge", -500, 1), ("stipend", 50, 1)]
    body = env.client.simulate_get(f"/api/deploy/apps/{d.id}", headers=auth()).json["deployment"]
    assert (body["billing_status"], body["status"]) == ("cancelled", "destroyed")
    assert audits(d, "reactivate") == []
    assert env.client.simulate_get("/api/deploy/billing", headers=auth()).json["debt"] == {
        "buddo_points": 0, "bitcoin": 0, "cycles": [], "cycles_count": 0}


def test_a_suspended_deployment_destroyed_still_owes(make_env):
    env, d = lapsed(make_env)
    env.clock.advance(GRACE)
    assert env.run().suspended == [str(d.id)]
    env.client.simulate_delete(f"/api/deploy/apps/{d.id}", headers=auth())
    assert BillingCycle.get((BillingCycle.deployment == d.id) & (BillingCycle.cycle == 1)).state == "unpaid"
    assert env.billing.debt("operator-1") == {"buddo_points": 500, "bitcoin": 0}


# --- paying at create, debt -----------------------------------------------------


def assert_nothing_created(env: Env, subdomain: str = "my-app") -> None:
    assert Deployment.select().count() == 0 and AuditEntry.select().count() == 0 and Job.select().count() == 0
    assert LedgerEntry.select().count() == 0 and BillingCycle.select().count() == 0
    assert not Deployment.select().where(Deployment.subdomain == subdomain).exists()


@pytest.mark.parametrize("tier,track,price,balances", [
    ("buddo-starter", "buddo_points", 500, {"billing_starting_points": 499, "billing_starting_sats": 10**9}),
    ("btc-pro", "bitcoin", 90_000, {"billing_starting_points": 10**9}),
])
def test_a_create_the_balance_cannot_pay_is_402_and_creates_nothing(make_env, tier, track, price, balances):
    env = make_env(**balances)
    balance = {"buddo_points": balances.get("billing_starting_points", 0),
               "bitcoin": balances.get("billing_starting_sats", 0)}[track]
    resp = env.post_create(tier=tier)
    assert resp.status_code == 402, resp.text
    error = resp.json["error"]
    assert error["code"] == "payment_required" and error["request_id"] == resp.headers["X-Request-Id"]
    assert error["details"] == {"reason": "insufficient_balance", "tier": tier, "track": track, "price": price,
                                "balance": balance, "shortfall": price - balance,
                                "debt": {"buddo_points": 0, "bitcoin": 0}}
    assert str(price) in error["message"]
    assert_nothing_created(env)
    assert BillingAccount.select().count() == 0  # not even the account: the create rolled back whole
    # The subdomain is still free: with the balance topped up, the same create goes through.
    env.billing.credit("operator-1", track, price - balance, "top-up", source="test")
    d = env.create(tier=tier)
    assert d.subdomain == "my-app"
    assert [(k, a, c) for k, a, c in ledger() if k in ("charge", "credit")] == [
        ("credit", price - balance, None), ("charge", -price, 0)]
    # The balance was exactly the price; a points tier's stipend is what is left.
    assert env.account() == ((50, 10**9) if track == "buddo_points" else (10**9 + 600, 0))


def test_an_account_in_debt_cannot_create_until_a_credit_pays_the_debt(make_env):
    env, d = lapsed(make_env)  # cycle 1 (500 points) unpaid, 150 points left
    env.billing.credit("operator-1", "bitcoin", 100_000, "sats", source="test")
    for tier in ("buddo-starter", "btc-starter"):  # any debt blocks a create on either track
        resp = env.post_create(subdomain="another", tier=tier)
        assert resp.status_code == 402, resp.text
        details = resp.json["error"]["details"]
        assert details["reason"] == "unpaid_debt" and details["debt"] == {"buddo_points": 500, "bitcoin": 0}
        assert "500 points" in resp.json["error"]["message"]
    assert Deployment.select().count() == 1 and not Deployment.select().where(
        Deployment.subdomain == "another").exists()
    view = env.client.simulate_get("/api/deploy/billing", headers=auth()).json
    assert view["debt"]["buddo_points"] == 500
    assert [(c["deployment_id"], c["cycle"], c["track"], c["amount"], c["billing_status"])
            for c in view["debt"]["cycles"]] == [(str(d.id), 1, "buddo_points", 500, "past_due")]
    paid = env.pay(payment(amount=350, reference="debt"))  # the webhook, as a payment processor sends it
    assert paid.status_code == 201 and paid.json["settled"] == [{"deployment_id": str(d.id), "cycle": 1}]
    assert env.pay(payment(amount=350, reference="debt")).json["replayed"] is True  # credited once
    assert env.billing.debt("operator-1") == {"buddo_points": 0, "bitcoin": 0}
    assert env.post_create(subdomain="another", tier="btc-starter").status_code == 201
    assert env.account() == (150 + 350 - 500 + 50 + 150, 100_000 - 25_000)


def test_the_three_rounds_abuse_leaves_every_charge_in_the_ledger(make_env):
    """Create on btc-pro, run 30 days, past_due, 3 days running, suspended, destroy; again and again."""
    env = make_env(billing_cycle_s=30 * 86400, billing_grace_s=3 * 86400)
    days = dt.timedelta(days=1)
    # Without the first cycle's price there is nothing to run at all.
    assert env.post_create(tier="btc-pro").json["error"]["code"] == "payment_required"
    assert_nothing_created(env)
    env.billing.credit("operator-1", "bitcoin", 90_000, "round-0", source="test")
    destroyed = []
    for round_ in range(3):
        if round_:
            refused = env.post_create(subdomain="freeloader", tier="btc-pro")
            assert refused.status_code == 402
            assert refused.json["error"]["details"]["debt"] == {"buddo_points": 0, "bitcoin": 90_000}
            # The debt and the next first cycle.
            env.billing.credit("operator-1", "bitcoin", 180_000, f"round-{round_}", source="test")
        d = env.create(subdomain="freeloader", tier="btc-pro")
        env.clock.now = d.inserted_at + 30 * days
        env.run()
        assert Deployment.get_by_id(d.id).billing_status == "past_due"
        env.clock.now = d.inserted_at + 33 * days
        assert env.run().suspended == [str(d.id)]
        assert env.client.simulate_delete(f"/api/deploy/apps/{d.id}", headers=auth()).status_code == 200
        destroyed.append(d.id)
    charges = [(e.deployment_id, e.cycle, e.amount) for e in
               LedgerEntry.select().where(LedgerEntry.kind == "charge").order_by(LedgerEntry.id)]
    assert charges == [(destroyed[0], 0, -90_000), (destroyed[0], 1, -90_000), (destroyed[1], 0, -90_000),
                       (destroyed[1], 1, -90_000), (destroyed[2], 0, -90_000)]
    assert [(c.deployment_id, c.cycle) for c in BillingCycle.select().where(BillingCycle.state == "unpaid")] == [
        (destroyed[2], 1)]
    assert BillingCycle.select().where(BillingCycle.state == "waived").count() == 0
    assert env.billing.debt("operator-1") == {"buddo_points": 0, "bitcoin": 90_000}
    assert env.account() == (5 * 600, 0)  # every paid cycle's stipend, no sats left
    assert env.post_create(subdomain="freeloader", tier="btc-pro").status_code == 402


def test_concurrent_creates_never_spend_the_balance_twice(make_env):
    env = make_env(billing_starting_sats=2 * 90_000)  # two btc-pro cycles
    database_proxy.obj.close()

    def create(i: int) -> Callable[[], int]:
        return lambda: env.post_create(subdomain=f"race-{i}", tier="btc-pro").status_code

    codes = in_threads(*(create(i) for i in range(6)))
    assert sorted(codes) == [201, 201, 402, 402, 402, 402]
    assert Deployment.select().count() == 2 and env.account() == (2 * 600, 0)
    assert sorted(e.amount for e in LedgerEntry.select().where(LedgerEntry.kind == "charge")) == [-90_000] * 2


# --- the ledger and concurrency --------------------------------------------------


def test_the_ledger_is_append_only(env):
    env.create()
    env.run()
    entry = LedgerEntry.select().first()
    with pytest.raises(peewee.DatabaseError, match="append-only"), database_proxy.obj.atomic():
        LedgerEntry.update(amount=1).where(LedgerEntry.id == entry.id).execute()
    with pytest.raises(peewee.DatabaseError, match="append-only"), database_proxy.obj.atomic():
        LedgerEntry.delete().where(LedgerEntry.id == entry.id).execute()
    assert LedgerEntry.get_by_id(entry.id).amount == entry.amount


def test_a_cycle_can_be_recorded_only_once(env):
    d = env.create()
    env.run()
    with pytest.raises(peewee.IntegrityError), database_proxy.obj.atomic():
        LedgerEntry.create(operator_id="operator-1", kind="charge", track="buddo_points", amount=-500,
                           deployment=d.id, cycle=0, created_at=utcnow())


def test_a_pass_working_from_a_stale_read_cannot_charge_a_cycle_again(env):
    d = env.create()
    env.run()
    # What a racing pass would have read before the first one committed: cycle 0 still due.
    Deployment.update(billing_cycle=0, next_billing_at=d.inserted_at).where(Deployment.id == d.id).execute()
    report = env.run()
    assert report.started == [] and report.paid == [] and not report.failed
    assert ledger() == [("adjustment", 2000, None), ("charge", -500, 0), ("stipend", 50, 0)]
    after = Deployment.get_by_id(d.id)
    assert (after.billing_cycle, after.next_billing_at) == (1, d.inserted_at + dt.timedelta(seconds=CYCLE))


def in_threads(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions at once, each on its own connection; re-raise the first failure."""
    barrier = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)
    errors: list[BaseException] = []

    def run(i: int, action: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = action()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's own thread
            errors.append(exc)
        finally:
            database_proxy.obj.close()

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_two_passes_at_once_charge_each_cycle_once(make_env):
    env = make_env(billing_starting_points=100_000)
    ids = [env.create(operator=f"op-{i % 2}", subdomain=f"app-{i}").id for i in range(4)]
    env.clock.advance(2.5 * CYCLE)
    database_proxy.obj.close()
    reports = in_threads(env.run, env.run)
    assert sorted(c for r in reports for c in r.started) == sorted((str(i), n) for i in ids for n in (1, 2))
    assert not any(r.failed for r in reports)
    for d in ids:
        charges = [e.cycle for e in LedgerEntry.select().where((LedgerEntry.deployment == d)
                                                                & (LedgerEntry.kind == "charge"))]
        assert sorted(charges) == [0, 1, 2]
    for op in ("op-0", "op-1"):
        assert env.account(op)[0] == 100_000 - 2 * 3 * 450
        assert env.account(op)[0] == sum(e.amount for e in LedgerEntry.select().where(
            (LedgerEntry.operator_id == op) & (LedgerEntry.track == "buddo_points")))


def test_a_credit_during_a_pass_is_neither_lost_nor_counted_twice(make_env):
    env = make_env(billing_starting_points=1500, billing_grace_s=10 * CYCLE)  # the three first cycles
    ids = [env.create(subdomain=f"app-{i}").id for i in range(3)]
    env.clock.advance(2.5 * CYCLE)
    database_proxy.obj.close()

    def credits() -> None:
        for n in range(10):
            env.billing.credit("operator-1", "buddo_points", 300, f"ref-{n}", source="test")

    in_threads(env.run, credits, env.run)
    credited = [e.amount for e in LedgerEntry.select().where(LedgerEntry.kind == "credit")]
    assert credited == [300] * 10
    points, _ = env.account()
    assert points == sum(e.amount for e in LedgerEntry.select())
    paid = BillingCycle.select().where(BillingCycle.state == "paid").count()
    assert points == 1500 + 3000 - paid * 450
    charges = [(str(e.deployment_id), e.cycle) for e in LedgerEntry.select().where(LedgerEntry.kind == "charge")]
    assert len(charges) == len(set(charges)) == paid
    assert BillingCycle.select().count() == 3 * len(ids)


def test_one_worker_at_a_time_holds_the_billing_lease(env):
    ttl = dt.timedelta(seconds=30)
    now = env.clock.now
    assert env.billing.take_lease("w1", ttl, now)
    assert not env.billing.take_lease("w2", ttl, now)
    assert env.billing.take_lease("w1", ttl, now + dt.timedelta(seconds=20))  # renewed
    assert not env.billing.take_lease("w2", ttl, now + dt.timedelta(seconds=40))
    assert env.billing.take_lease("w2", ttl, now + dt.timedelta(seconds=51))  # w1 stopped renewing
    env.billing.release_lease("w2")
    assert env.billing.take_lease("w3", ttl, now)


def test_the_worker_clock_bills_only_while_it_holds_the_lease(env):
    from buddo_deploy.worker import BillingClock

    d = env.create()
    # Cycle 1 due now (the worker's clock is the real one).
    Deployment.update(next_billing_at=utcnow() - dt.timedelta(seconds=1)).where(Deployment.id == d.id).execute()
    first, second = BillingClock(env.settings, "w1"), BillingClock(env.settings, "w2")
    assert second.billing.take_lease("w2", second.ttl)
    first.tick()
    assert BillingCycle.select().count() == 1
    second.tick()
    assert [(str(c.deployment_id), c.cycle, c.state) for c in BillingCycle.select().order_by(BillingCycle.cycle)] == [
        (str(d.id), 0, "paid"), (str(d.id), 1, "paid")]


def test_an_account_that_cannot_pay_costs_the_same_however_much_it_owes(make_env, monkeypatch):
    """Linear passes: settling reads a track's oldest unpaid cycle, not every cycle owed
    (the same statements and the same rows read for 3 cycles owed as for 6)."""
    env = make_env(billing_starting_points=1500, billing_grace_s=10 * CYCLE)  # owes on, not suspended
    ds = [env.create(subdomain=f"app{i}") for i in range(3)]  # 3 x 500 points: 150 left (the stipends)
    owner = "operator-1"

    def settle() -> tuple[int, int]:
        def once() -> None:
            with write_transaction(database_proxy.obj):
                env.billing._settle(owner, env.clock.now, PassReport())
        return count_statements(monkeypatch, once), count_rows(monkeypatch, once)

    env.clock.advance(CYCLE)
    assert sorted(env.run().started) == sorted((str(d.id), 1) for d in ds)
    owed_3 = settle()
    env.clock.advance(CYCLE)
    env.run()
    assert BillingCycle.select().where(BillingCycle.state == "unpaid").count() == 6
    assert settle() == owed_3  # a read per track and one try at the oldest: 3 owed or 6


def test_a_pass_stops_when_its_lease_is_lost(env, monkeypatch):
    ds = [env.create(subdomain=f"app{i}") for i in range(3)]
    env.clock.advance(CYCLE)
    monkeypatch.setattr(billing_service, "RENEW_S", 0.0)  # asked before each deployment
    asked: list[int] = []
    report = env.billing.run_pass(renew=lambda: asked.append(1) or len(asked) < 2)
    assert len(report.started) == 1 and len(asked) == 2  # the second ask lost it: one billed, then stopped
    assert len(env.billing.run_pass().started) == len(ds) - 1  # the next holder bills the rest


# --- the webhook -----------------------------------------------------------------


def payment(**overrides: Any) -> dict[str, Any]:
    return {"operator_id": "operator-1", "track": "buddo_points", "amount": 700, "reference": "pay-1"} | overrides


def test_a_signed_payment_credits_once_per_reference(make_env):
    env, d = lapsed(make_env)
    resp = env.pay(payment())
    assert resp.status_code == 201, resp.text
    body = resp.json
    assert (body["replayed"], body["points_balance"], body["sats_balance"]) == (False, 150 + 700 - 450, 0)
    assert body["settled"] == [{"deployment_id": str(d.id), "cycle": 1}] and body["reactivated"] == []
    again = env.pay(payment())
    assert again.status_code == 200 and again.json["replayed"] is True
    assert again.json["points_balance"] == body["points_balance"]
    assert [k for k, _, _ in ledger()].count("credit") == 1
    clash = env.pay(payment(amount=701))
    assert clash.status_code == 409 and clash.json["error"]["code"] == "reference_conflict"


def test_a_payment_for_an_unknown_operator_opens_the_account(make_env):
    env = make_env(billing_starting_points=100, billing_starting_sats=10)
    resp = env.pay(payment(operator_id="newcomer", track="bitcoin", amount=5000))
    assert resp.status_code == 201
    assert env.account("newcomer") == (100, 5010)
    assert ledger("newcomer") == [("adjustment", 100, None), ("adjustment", 10, None), ("credit", 5000, None)]


BAD_PAYMENTS = [
    ("operator with spaces", payment(operator_id="op 1"), 422),
    ("empty operator", payment(operator_id=""), 422),
    ("operator not a string", payment(operator_id=7), 422),
    ("zero", payment(amount=0), 422),
    ("negative", payment(amount=-5), 422),
    ("fraction", payment(amount=1.5), 422),
    ("numeric string", payment(amount="10"), 422),
    ("boolean", payment(amount=True), 422),
    ("huge", payment(amount=10**19), 422),
    ("unknown track", payment(track="dogecoin"), 422),
    ("no reference", {k: v for k, v in payment().items() if k != "reference"}, 422),
    ("bad reference", payment(reference="a b"), 422),
    ("extra field", payment(note="hi"), 422),
    ("not an object", [1, 2], 400),
]


@pytest.mark.parametrize("name,body,status", BAD_PAYMENTS, ids=[b[0] for b in BAD_PAYMENTS])
def test_bad_payments_change_nothing(make_env, name, body, status):
    env = make_env()
    before = LedgerEntry.select().count()
    resp = env.pay(body)
    assert resp.status_code == status, resp.text
    assert set(resp.json) == {"error"} and resp.json["error"]["message"]
    assert LedgerEntry.select().count() == before and BillingAccount.select().count() == 0


GOOD = sign(json.dumps(payment()).encode())
BAD_SIGNATURES = {
    "missing": None, "empty": "", "blank": "  \t", "zeros": "sha256=" + "0" * 64, "md5": "md5=abc",
    "other-body": sign(b"{}"), "other-secret": sign(json.dumps(payment()).encode(), "another-secret"),
    "non-ascii": "sha256=\u00e9", "non-ascii-hex": "sha256=" + "\u00e9" * 64, "latin-1": "\u00ff" * 10,
    "fullwidth-digits": "sha256=" + "\uff10" * 64, "arabic-digits": "sha256=" + "\u0661" * 64,
    "huge": "sha256=" + "a" * 100_000, "no-hex": "sha256=", "short": GOOD[:-1], "long": GOOD + "0",
    "not-hex": "sha256=" + "g" * 64, "scheme-case": "SHA256=" + GOOD[7:], "scheme-space": "sha256 =" + GOOD[7:],
    "other-scheme": "sha512=" + GOOD[7:], "no-scheme": GOOD[7:], "bearer": "Bearer " + GOOD,
    "nul": GOOD + "\x00", "newline": GOOD + "\n" + GOOD, "two-in-one": GOOD + "," + GOOD,
    "two-headers": [GOOD, GOOD], "good-and-bad": [GOOD, "sha256=" + "0" * 64],
}


@pytest.mark.parametrize("signature", list(BAD_SIGNATURES.values()), ids=list(BAD_SIGNATURES))
def test_a_bad_signature_is_401_and_changes_nothing(make_env, signature):
    env = make_env()
    raw = json.dumps(payment()).encode()
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if signature is not None:
        # Two headers of one name reach the app joined (as WSGI servers join them).
        values = [signature] if isinstance(signature, str) else signature
        headers += [("X-Buddo-Signature", value) for value in values]
    resp = env.client.simulate_post("/api/deploy/billing/payments", body=raw, headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.json["error"]["code"] == "invalid_signature" and resp.json["error"]["request_id"]
    assert len(resp.text) < 500  # the header is never echoed back
    assert LedgerEntry.select().count() == 0 and BillingAccount.select().count() == 0


@pytest.mark.parametrize("signature", [GOOD, GOOD.upper().replace("SHA256=", "sha256="), f" {GOOD}\t"],
                         ids=["lower", "upper-hex", "padded"])
def test_a_good_signature_in_any_hex_case_credits(make_env, signature):
    resp = make_env().pay(payment(), signature=signature)
    assert resp.status_code == 201, resp.text


def test_malformed_and_oversized_bodies(make_env):
    env = make_env()
    assert env.pay(b"{not json").status_code == 400
    huge = json.dumps(payment(reference="r" * 100) | {"pad": "x" * 20_000}).encode()
    resp = env.pay(huge)
    assert resp.status_code == 413 and resp.json["error"]["code"] == "payload_too_large"
    assert LedgerEntry.select().count() == 0


def test_the_webhook_is_off_without_a_secret(make_env):
    env = make_env(billing_webhook_secret=None)
    resp = env.pay(payment(), signature=sign(json.dumps(payment()).encode()))
    assert resp.status_code == 503 and resp.json["error"]["code"] == "webhook_disabled"


def test_the_webhook_has_its_own_rate_limit(make_env):
    env = make_env(rate_limits_enabled=True, rate_limit_webhook=2)
    codes = [env.pay(payment(reference=f"r{i}")).status_code for i in range(3)]
    assert codes == [201, 201, 429]


# --- GET /api/deploy/billing -----------------------------------------------------------


def test_operators_see_balances_deployments_and_a_paged_ledger(make_env):
    env = make_env(billing_starting_points=1500)
    d = env.create()
    env.create(subdomain="stopped-one")
    other = env.create(operator="someone-else", subdomain="theirs")
    env.run()
    stopped = Deployment.get(Deployment.subdomain == "stopped-one")
    env.client.simulate_post(f"/api/deploy/apps/{stopped.id}/stop", headers=auth())
    resp = env.client.simulate_get("/api/deploy/billing", headers=auth())
    assert resp.status_code == 200, resp.text
    body = resp.json
    assert (body["points_balance"], body["sats_balance"]) == (1500 - 2 * 450, 0)
    assert (body["cycle_seconds"], body["grace_seconds"], body["billing_enabled"]) == (CYCLE, GRACE, True)
    assert body["debt"] == {"buddo_points": 0, "bitcoin": 0, "cycles": [], "cycles_count": 0}
    shown = {x["subdomain"]: x for x in body["deployments"]}
    assert set(shown) == {"my-app", "stopped-one"} and str(other.id) not in json.dumps(body)
    assert shown["my-app"]["billing_status"] == "active"
    assert shown["my-app"]["next_charge"] == {"track": "buddo_points", "amount": 500,
                                              "at": shown["my-app"]["next_billing_at"]}
    assert shown["my-app"]["id"] == str(d.id)
    assert shown["stopped-one"]["next_charge"] is None
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = env.client.simulate_get("/api/deploy/billing", params=params, headers=auth()).json
        seen += [(e["kind"], e["amount"], e["cycle"]) for e in page["ledger"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ledger()))
    assert len(seen) == 5


def test_the_billing_view_is_a_page_whatever_the_operator_holds(make_env, monkeypatch):
    """Deployments come a page at a time (deployments_cursor), the debt as totals and its oldest
    cycles: the rows read for a page do not grow with the deployments or the cycles owed."""
    env = make_env(billing_starting_points=1500, billing_grace_s=10 * CYCLE)
    monkeypatch.setattr(billing_service, "DEBT_CYCLES", 2)

    def view(**params: Any) -> dict[str, Any]:
        resp = env.client.simulate_get("/api/deploy/billing", params=params, headers=auth())
        assert resp.status_code == 200, resp.text
        return resp.json

    def rows_read() -> int:
        return count_rows(monkeypatch, lambda: view(limit=1))

    env.create(subdomain="app0")
    ds = [env.create(subdomain=f"app{i}") for i in (1, 2)]
    env.clock.advance(CYCLE)
    env.run()  # 3 cycles unpaid (150 points left)
    owing_3 = rows_read()
    env.clock.advance(CYCLE)
    env.run()  # 6
    # A page of 1 deployment (which lists its own cycle owed, one more), the debt's totals and
    # its 2 oldest cycles: the other deployments' new cycles are not read.
    assert rows_read() == owing_3 + 1
    first = view(limit=2)
    assert [d["subdomain"] for d in first["deployments"]] == ["app2", "app1"] and first["deployments_next_cursor"]
    rest = view(limit=2, deployments_cursor=first["deployments_next_cursor"])
    assert [d["subdomain"] for d in rest["deployments"]] == ["app0"] and rest["deployments_next_cursor"] is None
    debt = first["debt"]
    assert (debt["buddo_points"], debt["cycles_count"], len(debt["cycles"])) == (6 * 500, 6, 2)
    assert [c["cycle"] for c in debt["cycles"]] == [1, 1]  # the oldest, which the next credit pays
    bad = env.client.simulate_get("/api/deploy/billing", params={"deployments_cursor": "nope"}, headers=auth())
    assert bad.status_code == 422 and bad.json["error"]["code"] == "invalid_cursor"
    assert str(ds[0].id) in json.dumps(first)


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"limit": "²"}, {"cursor": "²"},
                                    {"cursor": "abc"},
                                    {"cursor": "9" * 40}])
def test_bad_billing_queries_are_422(env, params):
    resp = env.client.simulate_get("/api/deploy/billing", params=params, headers=auth())
    assert resp.status_code == 422


def test_the_billing_view_needs_a_token(env):
    assert env.client.simulate_get("/api/deploy/billing").status_code == 401


def test_openapi_describes_billing(env):
    doc = env.client.simulate_get("/api/deploy/openapi.json").json
    assert doc["paths"]["/api/deploy/billing/payments"]["post"]["security"] == []
    assert {"BillingOut", "PaymentIn", "PaymentOut"} <= set(doc["components"]["schemas"])
    status = doc["components"]["schemas"]["DeploymentOut"]["properties"]["billing_status"]
    assert set(status["enum"]) == {"active", "past_due", "suspended", "cancelled"}
    assert "debt" in doc["components"]["schemas"]["BillingOut"]["required"]
    refused = doc["paths"]["/api/deploy/apps"]["post"]["responses"]["402"]
    assert "payment_required" in refused["description"]
    assert refused["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
