"""Billing on the real stack: a deployment that runs out of points is suspended, a payment brings it back."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack

CYCLE_S = 30
OPERATOR = "e2e-billing"


@pytest.fixture
def short_cycle(stack: Stack) -> Iterator[Stack]:
    original = dict(stack.env)
    stack.restart_platform(original | {
        "BUDDO_BILLING_CYCLE": f"{CYCLE_S}s", "BUDDO_BILLING_GRACE": "4s", "BUDDO_BILLING_INTERVAL": "1",
        "BUDDO_BILLING_STARTING_POINTS": "0", "BUDDO_BILLING_STARTING_SATS": "0",
    })
    try:
        yield stack
    finally:
        stack.restart_platform(original)


def pay(stack: Stack, amount: int, reference: str) -> dict:
    raw = json.dumps({"operator_id": OPERATOR, "track": "buddo_points", "amount": amount,
                      "reference": reference}).encode()
    digest = hmac.new(stack.env["BUDDO_BILLING_WEBHOOK_SECRET"].encode(), raw, hashlib.sha256).hexdigest()
    resp = stack.call("POST", "/api/deploy/billing/payments", data=raw,
                      headers={"Content-Type": "application/json", "X-Buddo-Signature": f"sha256={digest}"})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def wait_serving(stack: Stack, subdomain: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.https(subdomain).stdout.endswith("\n200"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{subdomain} never served")


def test_out_of_points_suspends_and_a_payment_reactivates(short_cycle: Stack) -> None:
    stack = short_cycle
    headers = stack.headers(OPERATOR)
    run = uuid.uuid4().hex[:8]
    # Two cycles of buddo-starter (500 points each, 50 points stipend) and 100 points left over.
    assert pay(stack, 1000, f"e2e-{run}-1")["points_balance"] == 1000
    image = stack.push("v1")
    stack.subdomains.add("e2e-bill")
    resp = stack.call("POST", "/api/deploy/apps", headers=headers,
                      json={"subdomain": "e2e-bill", "image": image, "tier": "buddo-starter"})
    assert resp.status_code == 201, resp.text
    ident = resp.json()["deployment"]["id"]
    # The create paid cycle 0 itself (500, stipend 50).
    assert stack.call("GET", "/api/deploy/billing", headers=headers).json()["points_balance"] == 550

    def logs() -> list[dict]:
        return list(stack.call("GET", f"/api/deploy/apps/{ident}/logs", headers=headers).json()["logs"])

    def wait_completed(action: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [e for e in logs() if e["action"] == action and e["status"] in {"completed", "failed"}]
            if done:
                assert done[-1]["status"] == "completed", done[-1]
                return done[-1]
            time.sleep(0.5)
        raise AssertionError(f"no completed {action}: {logs()}")

    wait_serving(stack, "e2e-bill")
    # Cycle 0 (paid by the create), cycle 1 at 30 s (paid), cycle 2 at 60 s (unpaid), suspended 4 s later.
    suspend = wait_completed("suspend", timeout=3 * CYCLE_S + 60)
    assert suspend["initiated_by"] is None and suspend["details"]["reason"] == "payment_lapsed"
    assert suspend["details"]["cycle"] == 2
    detail = stack.call("GET", f"/api/deploy/apps/{ident}", headers=headers).json()["deployment"]
    assert (detail["status"], detail["billing_status"]) == ("stopped", "suspended")
    [container] = stack.containers("e2e-bill")
    assert stack.inspect(container["Id"])["State"]["Running"] is False
    assert stack.https("e2e-bill").stdout.rsplit("\n", 1)[-1] in {"502", "503"}

    credit = pay(stack, 1000, f"e2e-{run}-2")
    assert credit["settled"] == [{"deployment_id": ident, "cycle": 2}] and credit["reactivated"] == [ident]
    assert credit["points_balance"] == 1000 - 2 * 450 + 1000 - 450
    billing = stack.call("GET", "/api/deploy/billing", params={"limit": 100}, headers=headers).json()
    entries = [(e["kind"], e["amount"], e["cycle"]) for e in reversed(billing["ledger"])]
    assert entries == [
        ("credit", 1000, None), ("charge", -500, 0), ("stipend", 50, 0), ("charge", -500, 1), ("stipend", 50, 1),
        ("credit", 1000, None), ("charge", -500, 2), ("stipend", 50, 2),
    ]

    reactivate = wait_completed("reactivate", timeout=90)
    assert reactivate["initiated_by"] is None and reactivate["details"]["reason"] == "payment_received"
    wait_serving(stack, "e2e-bill")
    detail = stack.call("GET", f"/api/deploy/apps/{ident}", headers=headers).json()["deployment"]
    assert (detail["status"], detail["billing_status"]) == ("running", "active")
    assert [e["action"] for e in logs() if e["action"] in {"suspend", "reactivate"}] == ["suspend", "reactivate"]

    stack.call("DELETE", f"/api/deploy/apps/{ident}", headers=headers)
    wait_completed("destroy", timeout=90)
