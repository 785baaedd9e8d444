"""Schemathesis hooks for scripts/fuzz-api.sh.

The built-in positive_data_acceptance check is told (schemathesis.toml) that a
schema-valid request may get 422, because some rejections depend on state no
schema can describe: a subdomain or custom domain already taken, a release the
deployment never had, a suspended deployment, a tier without
custom domains, a destroyed deployment, a cursor the API never returned. This
check keeps that allowance narrow: a schema-valid request answered 422 must name
one of those state conflicts, never `validation_failed` (the spec said yes, the
validator said no).

402 is allowed the same way and as narrowly: a create the account cannot pay for
(its first cycle is charged at creation, or the account owes for earlier cycles)
answers `payment_required`; no other operation and no other code may. fuzz-api.sh
opens accounts with balances the run never spends, so a 402 there means a bug.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis
from schemathesis import Case, CheckContext, HookContext, Response

STATE_CONFLICTS = frozenset({
    "subdomain_taken", "custom_domain_taken", "custom_domain_not_allowed", "deployment_destroyed", "invalid_cursor",
    # A release number the deployment never had, one whose image is gone, or none before the first.
    "release_not_found", "release_image_pruned", "no_previous_release",
    # Billing: a suspended deployment restarts once paid, not on request.
    "deployment_suspended",
    # An Idempotency-Key the run sent before with another request (the fuzzer reuses short keys).
    "idempotency_key_reused",
    # A PATCH of a deployment the run stopped (restart it first).
    "deployment_stopped",
    # A webhook URL the platform's setting does not allow (http, an address of this machine or a
    # private network, in production): a setting, not the schema, decides.
    "webhook_url_not_allowed",
    # A one-off run of a deployment that never ran (no worker runs beside the fuzzed server).
    "no_release",
})


@schemathesis.check
def schema_valid_requests_pass_validation(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    code = (response.json().get("error") or {}).get("code")
    if code not in STATE_CONFLICTS:
        raise AssertionError(f"schema-valid request rejected as {code!r}: {response.text[:500]}")
    return None


# The one operation that charges: creating a deployment.
CHARGED = ("POST", "/api/deploy/apps")


@schemathesis.check
def payment_is_required_only_to_create(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    if response.status_code != 402:
        return None
    code = (response.json().get("error") or {}).get("code")
    if (case.method.upper(), case.path) != CHARGED or code != "payment_required":
        raise AssertionError(f"{case.method} {case.path} answered 402 {code!r}: {response.text[:500]}")
    return None


# GET .../status?wait_for= (and a run's ?wait=) waits up to its timeout for a status no worker here ever brings
# (parked, holding no thread: tests/integration/test_server.py tests the wait). A valid
# wait_for is widened to every status, so the request answers at once and the run stays
# short; an invalid one is sent as generated (422).
EVERY_STATUS = "pending,deploying,running,stopped,failed,destroyed"
WAIT_FOR = re.compile(r"(?:pending|deploying|running|stopped|failed|destroyed)(?:,(?:pending|deploying|running|"
                      r"stopped|failed|destroyed)){0,5}")


@schemathesis.hook
def before_call(ctx: HookContext, case: Case, kwargs: dict[str, Any]) -> None:
    query = case.query
    if query and isinstance(query.get("wait_for"), str) and WAIT_FOR.fullmatch(query["wait_for"]):
        query["wait_for"] = EVERY_STATUS
    # A follow streams until the client leaves (an hour at most): the fuzzer reads whole answers.
    if query and str(query.get("follow", "")).lower() in {"true", "1", "yes", "on", "t", "y"}:
        query["follow"] = "false"
    # A run's wait likewise (no worker ends a run here): a valid one answers at once.
    if query and str(query.get("wait", "")).isdigit() and 0 < int(query["wait"]) <= 60:
        query["wait"] = 0
    # The fuzzer draws short Idempotency-Keys and sends one again with a request it sent
    # before: the API then replays the first answer, as it should (Stripe's behaviour,
    # tests/api/test_idempotency.py), and the stateful phase would take that old
    # answer for a new resource (a webhook created, deleted, then "created" again by the
    # replay: ST302). A schema-valid key is made unique per call; invalid ones are sent as drawn.
    headers = case.headers
    meta = case.meta
    if (headers and meta is not None and meta.generation.mode.is_positive
            and isinstance(headers.get("Idempotency-Key"), str)):
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4().hex}"
