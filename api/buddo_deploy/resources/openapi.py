"""OpenAPI 3.1, generated from the pydantic schemas that validate requests and shape responses."""

from __future__ import annotations

from typing import Any

import falcon
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import schemas

_REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "Malformed JSON", 401: "Missing or invalid OAuth token",
    402: "payment_required: the first cycle is charged at creation and the balance on the tier's track does not "
         "cover it (details.reason insufficient_balance), or the account still owes for cycles already started "
         "(unpaid_debt); details: tier, track, price, balance, debt (owed per track); nothing was created",
    403: "Forbidden (scope or owner)",
    404: "Not found (deployment, tier, registry login, webhook, or a malformed id)", 413: "Request body too large",
    422: "Validation failed, or the state does not allow it (e.g. subdomain taken, deployment destroyed)",
    409: "Reference already used for a different payment",
    429: "Rate or deployment limit reached, or too many expensive reads in flight",
    503: "Unavailable (no container host has room: capacity_exhausted; payment webhook not configured)",
    502: "The latest read of the host failed and no earlier one covers the request (app output); "
         "Retry-After says when a request queues the next",
}
_RATE_HEADERS = {
    name: {"description": description, "schema": {"type": "integer", "minimum": 0}}
    for name, description in (
        ("RateLimit-Limit", "Requests allowed in the window"),
        ("RateLimit-Remaining", "Requests left in the window"),
        ("RateLimit-Reset", "Seconds until the window resets"),
        ("Retry-After", "Seconds to wait (rate limits only, not deployment limits)"),
    )
}
# Every operation on one deployment, reachable from the id a create returns.
_ITEM_OPERATIONS = ("getDeployment", "updateDeployment", "getDeploymentStatus", "getDeploymentLogs",
                    "restartDeployment", "stopDeployment", "destroyDeployment", "listReleases", "rollbackDeployment",
                    "getDeploymentOutput", "startRun", "listRuns")


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=name)}}}


def _responses(ok_status: str, ok_model: str, errors: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {ok_status: {"description": "OK", "content": _json(ok_model)}}
    for code in (401, 403, 429, *errors):
        out[str(code)] = {"description": _ERRORS[code], "content": _json("ErrorOut")}
    out["429"]["headers"] = _RATE_HEADERS
    return out


def _operation(operation_id: str, summary: str, ok_model: str, errors: tuple[int, ...] = (),
               ok_status: str = "200") -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary,
            "responses": _responses(ok_status, ok_model, errors)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One optional query parameter per field of the model that parses the query."""
    schema = model.model_json_schema(mode="validation")
    parameters = []
    for name, prop in schema["properties"].items():
        # An absent parameter is the null default; in a query string null cannot be written.
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop.update(branches[0])
        prop.pop("title", None)
        description = prop.pop("description", None)
        if prop.get("default") is None:
            prop.pop("default", None)
        parameters.append({"name": name, "in": "query", "required": False, "description": description,
                           "schema": prop})
    return parameters


def _ops_paths(item: list[dict[str, Any]]) -> dict[str, Any]:
    """The deploy log's job view and the Prometheus endpoint."""
    job = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1},
           "description": "`job_id` of an audit entry"}
    return {
        "/api/deploy/apps/{deployment_id}/jobs/{job_id}": {
            "parameters": [*item, job],
            "get": _operation("getDeploymentJob",
                              "One job of the deploy log: its run and the playbook events it recorded",
                              "JobEnvelope", (404, 422)) | {"parameters": _query_parameters(schemas.JobQuery)},
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus metrics (text format); only for clients in BUDDO_METRICS_ALLOW",
                "security": [],
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "403": {"description": "Client address not allowed", "content": _json("ErrorOut")},
                },
            },
        },
    }


def build_document(context: schemas.ValidationContext) -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        schemas.TierOut, schemas.DeploymentEnvelope, schemas.DeploymentList,
        schemas.StatusOut, schemas.LogList, schemas.DestroyOut, schemas.ErrorOut, schemas.JobEnvelope,
        schemas.BillingOut, schemas.PaymentIn, schemas.PaymentOut, schemas.ReleaseList, schemas.RollbackIn,
        schemas.OutputOut, schemas.RegistryLoginIn, schemas.RegistryLoginEnvelope, schemas.RegistryLoginList,
        schemas.RegistryLoginRemoved, schemas.WebhookIn, schemas.WebhookUpdate, schemas.WebhookCreated,
        schemas.WebhookEnvelope, schemas.WebhookList, schemas.WebhookRemoved, schemas.DeliveryList,
        schemas.RunIn, schemas.RunEnvelope, schemas.RunList,
    ]
    inputs = (schemas.PaymentIn, schemas.RollbackIn, schemas.RegistryLoginIn, schemas.WebhookIn,
              schemas.WebhookUpdate, schemas.RunIn)
    _, top = models_json_schema(
        [(m, "validation" if m in inputs else "serialization") for m in models], ref_template=_REF,
    )
    components = top.get("$defs", {})
    for model in (schemas.DeploymentCreate, schemas.DeploymentUpdate):
        schema = model.json_schema_for(context)
        for name, definition in schema.pop("$defs", {}).items():  # HealthCheck
            components.setdefault(name, definition)
        components[model.__name__] = schema
    components["TierList"] = {"type": "array", "items": {"$ref": _REF.format(model="TierOut")}}
    item = [{"name": "deployment_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    create = _operation("createDeployment", "Create a deployment", "DeploymentEnvelope",
                        (400, 402, 404, 413, 422, 503), ok_status="201")
    create["requestBody"] = {"required": True, "content": _json("DeploymentCreate")}
    create["responses"]["201"]["links"] = {
        operation_id: {"operationId": operation_id, "parameters": {"deployment_id": "$response.body#/deployment/id"}}
        for operation_id in _ITEM_OPERATIONS
    }
    update = _operation("updateDeployment", "Change a running deployment in place (image, env_vars as a merge, port, "
                        "tier): a new release, the serving container replaced once the new one answers; a change "
                        "of nothing is 200 and runs nothing", "DeploymentEnvelope", (400, 402, 404, 413, 422, 503))
    update["requestBody"] = {"required": True, "content": _json("DeploymentUpdate")}
    update["responses"]["200"]["links"] = {
        operation_id: {"operationId": operation_id, "parameters": {"deployment_id": "$response.body#/deployment/id"}}
        for operation_id in ("getDeploymentStatus", "listReleases", "rollbackDeployment", "getDeploymentLogs")
    }
    listing = _operation("listDeployments", "List the caller's deployments, newest first", "DeploymentList", (422,))
    listing["parameters"] = _query_parameters(schemas.ListQuery)
    status = _operation("getDeploymentStatus", "Lightweight status; with wait_for, once it is reached",
                        "StatusOut", (404, 422))
    status["parameters"] = _query_parameters(schemas.StatusQuery)
    status["responses"]["200"].setdefault("headers", {}).update({
        "Wait-Result": {"description": "With wait_for: `reached`, or `timeout` (the status is the current one)",
                        "schema": {"type": "string", "enum": ["reached", "timeout"]}}})
    paths = {
        "/api/deploy/tiers": {"get": _operation("listTiers", "List deploy tiers", "TierList")},
        "/api/deploy/apps": {"get": listing, "post": create},
        "/api/deploy/apps/{deployment_id}": {
            "parameters": item,
            "get": _operation("getDeployment", "Deployment details", "DeploymentEnvelope", (404,)),
            "delete": _operation("destroyDeployment", "Destroy a deployment", "DestroyOut", (404, 422)),
            "patch": update,
        },
        "/api/deploy/apps/{deployment_id}/status": {"parameters": item, "get": status},
        "/api/deploy/apps/{deployment_id}/logs": {
            "parameters": item,
            "get": _operation("getDeploymentLogs", "Audit log, oldest first", "LogList", (404, 422))
            | {"parameters": _query_parameters(schemas.LogsQuery)},
        },
        "/api/deploy/apps/{deployment_id}/restart": {
            "parameters": item,
            "post": _operation("restartDeployment", "Restart (pull latest image)", "DeploymentEnvelope", (404, 422)),
        },
        "/api/deploy/apps/{deployment_id}/stop": {
            "parameters": item,
            "post": _operation("stopDeployment", "Stop", "DeploymentEnvelope", (404, 422)),
        },
    }
    releases = _operation("listReleases", "Releases, newest first", "ReleaseList", (404, 422))
    releases["parameters"] = _query_parameters(schemas.ReleasesQuery)
    rollback = _operation("rollbackDeployment", "Run a release's image again by its digest (default: the previous)",
                          "DeploymentEnvelope", (400, 404, 413, 422))
    rollback["requestBody"] = {"required": False, "content": _json("RollbackIn")}
    app_output = _operation("getDeploymentOutput", "The container's stdout and stderr, newest last, env values "
                            "masked, from the latest read on the host (at once; a read older than "
                            "BUDDO_OUTPUT_MAX_AGE is answered while a newer one is queued)", "OutputOut",
                            (404, 422, 502))
    app_output["parameters"] = _query_parameters(schemas.OutputQuery)
    app_output["responses"]["200"]["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "With follow=true: `id: <n>` `event: line` `data: {at, stream, "
                                                    "text, container}` per line; `: ping` while idle"}}
    app_output["responses"]["202"] = {
        "description": "No read covers this request yet; one is queued (refresh): ask again after Retry-After",
        "content": _json("OutputOut"),
        "headers": {
            "Location": {"description": "Where to ask again (this request)", "schema": {"type": "string"}},
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 0}},
        },
    }
    app_output["responses"]["502"]["headers"] = {
        "Retry-After": {"description": "Seconds until a request queues the next read",
                        "schema": {"type": "integer", "minimum": 1}}}
    paths |= {
        "/api/deploy/apps/{deployment_id}/output": {"parameters": item, "get": app_output},
        "/api/deploy/apps/{deployment_id}/releases": {"parameters": item, "get": releases},
        "/api/deploy/apps/{deployment_id}/rollback": {"parameters": item, "post": rollback},
    }
    paths |= _run_paths(item)
    paths |= _billing_paths()
    paths |= _registry_login_paths(context)
    paths |= _webhook_paths()
    paths |= _ops_paths(item)
    _idempotent(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Buddo Deploy API", "version": "1.0.0"},
        "components": {
            "schemas": components,
            "securitySchemes": {"oauth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"oauth": ["deploy:manage"]}],
        "paths": paths,
    }


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "A key of the caller's choosing (1-255 visible ASCII characters): a retry with the same key, "
                   "method, path and body within 24 h gets the first answer again (with Idempotent-Replayed: "
                   "true) and does nothing again; the same key with another request is 422 "
                   "(idempotency_key_reused). 5xx and 429 answers are not kept: their retry runs.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
}
_REPLAYED = {"Idempotent-Replayed": {"description": "true: the answer given to an earlier request with this "
                                                    "Idempotency-Key, given again", "schema": {"type": "string"}}}


def _idempotent(paths: dict[str, Any]) -> None:
    """Every operator's POST, PATCH, PUT and DELETE takes an Idempotency-Key (middleware.Idempotency)."""
    for path_item in paths.values():
        for method in ("post", "patch", "put", "delete"):
            operation = path_item.get(method)
            if operation is None or operation.get("security") == []:  # a signed webhook keeps its reference
                continue
            operation["parameters"] = [*operation.get("parameters", []), _IDEMPOTENCY_KEY]
            operation["responses"]["409"] = {
                "description": "idempotency_key_in_use: a request with this Idempotency-Key is still being "
                               "answered (Retry-After)", "content": _json("ErrorOut")}
            operation["responses"].setdefault("422", {
                "description": "invalid_idempotency_key, or idempotency_key_reused: the key was used for another "
                               "request", "content": _json("ErrorOut")})
            for status, response in operation["responses"].items():
                if status not in ("409", "422"):
                    response["headers"] = {**response.get("headers", {}), **_REPLAYED}


def _billing_paths() -> dict[str, Any]:
    signature = {
        "name": "X-Buddo-Signature", "in": "header", "required": True,
        "description": "sha256=<hex HMAC-SHA256 of the raw body with BUDDO_BILLING_WEBHOOK_SECRET>",
        "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
    }
    billing = _operation("getBilling", "Balances, each live deployment's billing, and the ledger (newest first)",
                         "BillingOut", (422,))
    billing["parameters"] = _query_parameters(schemas.BillingQuery)
    payment = _operation("creditAccount", "Credit an account (signed webhook; idempotent by reference)",
                         "PaymentOut", (400, 409, 413, 422, 503), ok_status="201")
    payment |= {"security": [], "parameters": [signature],
                "requestBody": {"required": True, "content": _json("PaymentIn")}}
    payment["responses"]["200"] = {"description": "A replayed reference: the original credit, nothing changed",
                                   "content": _json("PaymentOut")}
    return {"/api/deploy/billing": {"get": billing}, "/api/deploy/billing/payments": {"post": payment}}


def _registry_login_paths(context: schemas.ValidationContext) -> dict[str, Any]:
    listing = _operation("listRegistryLogins", "The caller's registry logins, by registry (never a password)",
                         "RegistryLoginList")
    put = _operation("putRegistryLogin", "Create (201) or replace (200) the caller's login for a registry; "
                     "every pull of that registry's images by the caller's deployments uses it",
                     "RegistryLoginEnvelope", (400, 404, 413, 422), ok_status="201")
    put["requestBody"] = {"required": True, "content": _json("RegistryLoginIn")}
    put["responses"]["200"] = {"description": "Replaced", "content": _json("RegistryLoginEnvelope")}
    remove = _operation("deleteRegistryLogin", "Remove the caller's login for a registry (pulls are then anonymous)",
                        "RegistryLoginRemoved", (404, 422))
    link = {"deleteRegistryLogin": {"operationId": "deleteRegistryLogin",
                                    "parameters": {"registry": "$response.body#/registry_login/registry"}}}
    put["responses"]["201"]["links"] = link
    return {
        "/api/deploy/registry-logins": {"get": listing},
        "/api/deploy/registry-logins/{registry}": {
            "parameters": [schemas.RegistryLoginKey.path_parameter(context)], "put": put, "delete": remove,
        },
    }


def _run_paths(item: list[dict[str, Any]]) -> dict[str, Any]:
    """One-off runs of a deployment (README "One-off runs")."""
    start = _operation("startRun", "Run a one-off command in a new container of the current release (queued)",
                       "RunEnvelope", (400, 404, 413, 422), ok_status="202")
    start["requestBody"] = {"required": True, "content": _json("RunIn")}
    start["responses"]["202"]["links"] = {"getRun": {
        "operationId": "getRun", "parameters": {"deployment_id": "$request.path.deployment_id",
                                                "run_id": "$response.body#/run/id"}}}
    one = _operation("getRun", "A run: its state, exit code and output; with wait, once it finished; with "
                     "follow, its lines as they are printed", "RunEnvelope", (404, 422))
    one["parameters"] = _query_parameters(schemas.RunQuery)
    one["responses"]["200"]["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "With follow=true: `id: <n>` `event: line` `data: {at, stream, "
                                                    "text, container}` per line from the first; `event: end` "
                                                    "`data: {run}` once it finished; `: ping` while idle"}}
    run = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
           "description": "`id` of a run"}
    return {
        "/api/deploy/apps/{deployment_id}/runs": {
            "parameters": item, "post": start,
            "get": _operation("listRuns", "The deployment's 20 newest runs", "RunList", (404,)),
        },
        "/api/deploy/apps/{deployment_id}/runs/{run_id}": {"parameters": [*item, run], "get": one},
    }


def _webhook_paths() -> dict[str, Any]:
    """The caller's webhook endpoints (README "Webhooks")."""
    item = [{"name": "webhook_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"},
             "description": "`id` of a webhook endpoint"}]
    create = _operation("createWebhook", "Register an endpoint; the answer holds its signing secret, shown once",
                        "WebhookCreated", (400, 413, 422), ok_status="201")
    create["requestBody"] = {"required": True, "content": _json("WebhookIn")}
    update = _operation("updateWebhook", "Change an endpoint (enabled: true enables it again)", "WebhookEnvelope",
                        (400, 404, 413, 422))
    update["requestBody"] = {"required": True, "content": _json("WebhookUpdate")}
    deliveries = _operation("listWebhookDeliveries", "The endpoint's deliveries, newest first, with their attempts",
                            "DeliveryList", (404, 422))
    deliveries["parameters"] = _query_parameters(schemas.DeliveriesQuery)
    ident = {"webhook_id": "$response.body#/webhook/id"}
    create["responses"]["201"]["links"] = {
        operation: {"operationId": operation, "parameters": ident}
        for operation in ("getWebhook", "updateWebhook", "deleteWebhook", "listWebhookDeliveries")}
    return {
        "/api/deploy/webhooks": {
            "get": _operation("listWebhooks", "The caller's webhook endpoints (never a secret)", "WebhookList"),
            "post": create,
        },
        "/api/deploy/webhooks/{webhook_id}": {
            "parameters": item,
            "get": _operation("getWebhook", "One webhook endpoint", "WebhookEnvelope", (404,)),
            "patch": update,
            "delete": _operation("deleteWebhook", "Delete an endpoint and its delivery log", "WebhookRemoved", (404,)),
        },
        "/api/deploy/webhooks/{webhook_id}/deliveries": {"parameters": item, "get": deliveries},
    }


class OpenApiResource:
    auth_required = False

    def __init__(self, context: schemas.ValidationContext) -> None:
        self.document = build_document(context)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
