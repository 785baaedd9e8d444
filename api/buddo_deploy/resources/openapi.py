"""OpenAPI 3.1, generated from the pydantic schemas."""

from __future__ import annotations

from typing import Any

import falcon
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import schemas

_REF = "#/components/schemas/{model}"


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=name)}}}


def _responses(ok_status: str, ok_model: str | None, errors: tuple[int, ...]) -> dict[str, Any]:
    described = {
        400: "Malformed JSON", 401: "Missing or invalid OAuth token", 403: "Forbidden (scope or owner)",
        404: "Not found", 422: "Validation failed", 429: "Rate or deployment limit reached",
    }
    out: dict[str, Any] = {ok_status: {"description": "OK"}}
    if ok_model:
        out[ok_status]["content"] = _json(ok_model)
    for code in errors:
        out[str(code)] = {"description": described[code], "content": _json("ErrorOut")}
    return out


def _ops_paths(item: list[dict[str, Any]]) -> dict[str, Any]:
    """The deploy log's job view and the Prometheus endpoint."""
    job = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1},
           "description": "`job_id` of an audit entry"}
    return {
        "/api/deploy/apps/{deployment_id}/jobs/{job_id}": {
            "parameters": [*item, job],
            "get": {
                "summary": "One job of the deploy log: its run and the playbook events it recorded",
                "parameters": [
                    {"name": "limit", "in": "query", "description": "events per page (default 200)",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "cursor", "in": "query", "description": "`next_cursor` of the previous page",
                     "schema": {"type": "string"}},
                ],
                "responses": _responses("200", "JobEnvelope", (401, 403, 404, 422, 429)),
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format); only for clients in BUDDO_METRICS_ALLOW",
                "security": [],
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "403": {"description": "Client address not allowed", "content": _json("ErrorOut")},
                },
            },
        },
    }


def build_document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        schemas.DeploymentCreate, schemas.TierOut, schemas.DeploymentEnvelope, schemas.DeploymentList,
        schemas.StatusOut, schemas.LogList, schemas.DestroyOut, schemas.ErrorOut, schemas.JobEnvelope,
    ]
    _, top = models_json_schema(
        [(m, "validation" if m is schemas.DeploymentCreate else "serialization") for m in models],
        ref_template=_REF,
    )
    components = top.get("$defs", {})
    components["TierList"] = {"type": "array", "items": {"$ref": _REF.format(model="TierOut")}}
    item = [{"name": "deployment_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    common = (401, 403, 404, 429)
    paths = {
        "/api/deploy/tiers": {
            "get": {"summary": "List deploy tiers", "responses": _responses("200", "TierList", (401, 403, 429))},
        },
        "/api/deploy/apps": {
            "get": {
                "summary": "List the caller's deployments, newest first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "include_destroyed", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": _responses("200", "DeploymentList", (401, 403, 422, 429)),
            },
            "post": {
                "summary": "Create a deployment",
                "requestBody": {"required": True, "content": _json("DeploymentCreate")},
                "responses": _responses("201", "DeploymentEnvelope", (400, 401, 403, 404, 422, 429)),
            },
        },
        "/api/deploy/apps/{deployment_id}": {
            "parameters": item,
            "get": {"summary": "Deployment details", "responses": _responses("200", "DeploymentEnvelope", common)},
            "delete": {
                "summary": "Destroy a deployment",
                "responses": _responses("200", "DestroyOut", (*common, 422)),
            },
        },
        "/api/deploy/apps/{deployment_id}/status": {
            "parameters": item,
            "get": {"summary": "Lightweight status", "responses": _responses("200", "StatusOut", common)},
        },
        "/api/deploy/apps/{deployment_id}/logs": {
            "parameters": item,
            "get": {"summary": "Audit log", "responses": _responses("200", "LogList", common)},
        },
        "/api/deploy/apps/{deployment_id}/restart": {
            "parameters": item,
            "post": {"summary": "Restart (pull latest image)",
                     "responses": _responses("200", "DeploymentEnvelope", (*common, 422))},
        },
        "/api/deploy/apps/{deployment_id}/stop": {
            "parameters": item,
            "post": {"summary": "Stop", "responses": _responses("200", "DeploymentEnvelope", (*common, 422))},
        },
    }
    paths |= _ops_paths(item)
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


class OpenApiResource:
    auth_required = False

    def __init__(self) -> None:
        self.document = build_document()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
