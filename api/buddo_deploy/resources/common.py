"""Body parsing and presentation shared by the resources."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import asdict
from typing import Any, TypeVar

import falcon
from pydantic import BaseModel, ValidationError

from ..domain_errors import Invalid, Malformed, TooLarge
from ..schemas import (
    PATTERN_HINTS,
    ConditionOut,
    CustomDomainVerificationOut,
    DeploymentOut,
    HealthCheck,
    LogEntryOut,
)
from ..services.conditions import conditions


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not.
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def read_json_object(req: falcon.Request, max_bytes: int) -> dict[str, Any]:
    return parse_json_object(read_body(req, max_bytes))


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    length = req.content_length
    if length is not None and length > max_bytes:
        raise TooLarge(f"Request body exceeds {max_bytes} bytes", code="payload_too_large")
    raw: bytes = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise TooLarge(f"Request body exceeds {max_bytes} bytes", code="payload_too_large")
    return raw


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise Malformed("Request body must be a JSON object", code="malformed_json")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"Malformed JSON: {exc}", code="malformed_json") from exc
    except RecursionError as exc:
        raise Malformed("Malformed JSON: nested too deeply", code="malformed_json") from exc
    if not isinstance(body, dict):
        raise Malformed("Request body must be a JSON object", code="malformed_json")
    return body


def send(resp: falcon.Response, model: BaseModel, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = model.model_dump_json()


def deployment_out(deployment: Any, url: str, verification: dict[str, Any] | None = None) -> DeploymentOut:
    return DeploymentOut(
        id=deployment.id,
        app_id=deployment.app_id,
        deploy_tier_id=deployment.tier_id,
        tier=deployment.tier.slug,
        container_name=deployment.container_name,
        container_image=deployment.container_image,
        subdomain=deployment.subdomain,
        url=url,
        custom_domain=deployment.custom_domain,
        custom_domain_status=deployment.custom_domain_status,
        custom_domain_verification=CustomDomainVerificationOut.model_validate(verification) if verification else None,
        port=deployment.port,
        status=deployment.status,
        desired_state=deployment.desired_state,
        generation=deployment.generation,
        observed_generation=deployment.observed_generation,
        health_status=deployment.health_status,
        last_health_check=deployment.last_health_check,
        billing_status=deployment.billing_status,
        next_billing_at=deployment.next_billing_at,
        memory_limit_mb=deployment.memory_limit_mb,
        cpu_limit_millicores=deployment.cpu_limit_millicores,
        env_var_names=json.loads(deployment.env_var_names),
        health_check=HealthCheck.model_validate_json(deployment.health_check) if deployment.health_check else None,
        host=deployment.host,
        image_digest=deployment.image_digest,
        inserted_at=deployment.inserted_at,
        updated_at=deployment.updated_at,
        conditions=[ConditionOut(**asdict(condition)) for condition in conditions(deployment)],
    )


def log_entry_out(entry: Any) -> LogEntryOut:
    return LogEntryOut(
        id=entry.id,
        action=entry.action,
        status=entry.status,
        initiated_by=entry.initiated_by,
        inserted_at=entry.inserted_at,
        details=json.loads(entry.details) if entry.details else None,
        job_id=entry.job_id,
    )


def validation_error(exc: ValidationError) -> Invalid:
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "string_pattern_mismatch" and error["loc"]:
            # A dict key's error ends its location with "[key]" (env_vars.NAME.[key]).
            hint = f"{error['loc'][0]}.[key]" if error["loc"][-1] == "[key]" else str(error["loc"][0])
            message = PATTERN_HINTS.get(hint, message)
        details.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return Invalid(f"Validation failed: {summary}", code="validation_failed", details=details)


Query = TypeVar("Query", bound=BaseModel)
Value = TypeVar("Value")
# How often a wait looks again on a server that cannot park it (ours does: serving.WAKE_S).
WAIT_POLL_S = 0.1


def read_model(req: falcon.Request, model: type[Query], max_bytes: int, context: Any = None) -> Query:
    """The body as ``model``: 400 when it is not a JSON object, 422 in the envelope (field by
    field) when it does not validate."""
    body = read_json_object(req, max_bytes)
    try:
        return model.model_validate(body, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def wait_or_park(req: falcon.Request, current: Callable[[], Value], done: Callable[[Value], bool], key: Hashable,
                 check: Callable[[Collection[Hashable]], Collection[Hashable]], timeout_s: float) -> Value | None:
    """What to answer a wait with: ``current()`` once ``done`` by it, or at ``timeout_s``.

    Our server parks the request instead (None: answer nothing now; serving.py serves it
    again when ``check`` has ``key`` or at the timeout, and ``current()`` answers then). Other
    servers wait here, holding the thread."""
    value = current()
    if done(value) or req.env.get("buddo.resumed"):
        return value
    park = req.env.get("buddo.park")
    if park is not None:
        park(key, check, timeout_s)
        req.context.parked = True
        return None
    deadline = time.monotonic() + timeout_s
    while not done(value) and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(WAIT_POLL_S, left))
        value = current()
    return value


def parse_query(req: falcon.Request, model: type[Query]) -> Query:
    """The query string as ``model`` (unknown parameters ignored; of a repeated one, the last
    value, as falcon's get_param gives it); 422 in the envelope when it does not validate."""
    try:
        return model.model_validate({name: req.get_param(name) for name in model.model_fields
                                     if req.get_param(name) is not None})
    except ValidationError as exc:
        raise validation_error(exc) from exc
