"""The status conditions of a deployment, derived from its row (services/conditions.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from buddo_deploy.models import Deployment
from buddo_deploy.services.conditions import conditions, degraded, domain_verified, progressing, ready, suspended
from buddo_deploy.vocabulary import ConditionStatus, ConditionType

SINCE = dt.datetime(2026, 5, 21, 10, 0, 0)


def row(**values: object) -> Deployment:
    """A deployment that runs, converged and healthy, billing active, no custom domain; ``values`` change it."""
    base: dict[str, object] = {
        "desired_state": "running", "status": "running", "generation": 3, "observed_generation": 3,
        "failed_generation": None, "serving_port": 20000, "health_status": "healthy", "billing_status": "active",
        "custom_domain": None, "custom_domain_status": None, "custom_domain_unverified_since": None,
    }
    return Deployment(**(base | values))


def verdict(condition) -> tuple[str, str]:
    return condition.status.value, condition.reason


@pytest.mark.parametrize(("values", "expected"), [
    ({}, ("True", "Running")),
    ({"observed_generation": 2, "status": "deploying"}, ("True", "Running")),  # a restart: the old one serves
    ({"health_status": "unhealthy"}, ("False", "Unhealthy")),
    ({"serving_port": None, "status": "pending", "generation": 1, "observed_generation": 0}, ("False", "Pending")),
    ({"serving_port": None, "status": "deploying", "observed_generation": 2}, ("False", "Deploying")),
    ({"serving_port": None, "status": "failed", "failed_generation": 3, "observed_generation": 2},
     ("False", "DeployFailed")),
    ({"desired_state": "stopped", "status": "stopped", "serving_port": None}, ("False", "Stopped")),
    ({"desired_state": "stopped", "status": "stopped", "billing_status": "suspended"}, ("False", "Suspended")),
    ({"desired_state": "absent", "status": "destroyed", "billing_status": "cancelled"}, ("False", "Destroyed")),
])
def test_ready(values, expected):
    assert verdict(ready(row(**values))) == expected


@pytest.mark.parametrize(("values", "expected"), [
    ({}, ("False", "Converged")),
    ({"observed_generation": 2}, ("True", "Converging")),
    ({"generation": 1, "observed_generation": 0, "status": "pending"}, ("True", "Converging")),
    ({"observed_generation": 2, "failed_generation": 3}, ("False", "ConvergeFailed")),
    ({"observed_generation": 2, "failed_generation": 2}, ("True", "Converging")),  # an older generation failed
])
def test_progressing(values, expected):
    assert verdict(progressing(row(**values))) == expected


@pytest.mark.parametrize(("values", "expected"), [
    ({}, ("False", "AsExpected")),
    ({"health_status": "unknown", "observed_generation": 2}, ("False", "AsExpected")),
    ({"health_status": "unhealthy"}, ("True", "Unhealthy")),
    ({"failed_generation": 3, "observed_generation": 2, "serving_port": None}, ("True", "ConvergeFailed")),
    ({"desired_state": "stopped", "health_status": "unhealthy"}, ("False", "NotRunning")),
    ({"desired_state": "absent", "failed_generation": 3}, ("False", "NotRunning")),
])
def test_degraded(values, expected):
    assert verdict(degraded(row(**values))) == expected


@pytest.mark.parametrize(("billing_status", "expected"), [
    ("suspended", ("True", "PaymentOverdue")),
    ("active", ("False", "BillingActive")),
    ("past_due", ("False", "PastDue")),
    ("cancelled", ("False", "Cancelled")),
])
def test_suspended(billing_status, expected):
    assert verdict(suspended(row(billing_status=billing_status))) == expected


@pytest.mark.parametrize(("values", "expected", "since"), [
    ({"custom_domain_status": "active"}, ("True", "Verified"), None),
    ({"custom_domain_status": "pending", "custom_domain_unverified_since": SINCE}, ("False", "AwaitingProof"), SINCE),
    ({"custom_domain_status": "misconfigured", "custom_domain_unverified_since": SINCE}, ("False", "ProofMissing"),
     SINCE),
    ({"custom_domain_status": None}, ("Unknown", "NotChecked"), None),
])
def test_domain_verified(values, expected, since):
    condition = domain_verified(row(custom_domain="app.example.com", **values))
    assert condition is not None
    assert verdict(condition) == expected and condition.last_transition_time == since


def test_an_expired_claim_is_not_verified_and_no_claim_has_no_condition():
    expired = domain_verified(row(custom_domain_status="expired"))
    assert expired is not None and verdict(expired) == ("False", "ClaimExpired")
    assert domain_verified(row()) is None


def test_every_condition_once_with_the_observed_generation():
    found = conditions(row(observed_generation=2, custom_domain="app.example.com", custom_domain_status="active"))
    assert [c.type for c in found] == list(ConditionType)
    assert {c.observed_generation for c in found} == {2}
    assert all(c.message and c.reason[0].isupper() and " " not in c.reason for c in found)
    assert [c.type for c in conditions(row())] == [t for t in ConditionType if t is not ConditionType.DOMAIN_VERIFIED]
    assert all(c.last_transition_time is None for c in conditions(row()))
    assert ConditionStatus.TRUE == "True"
