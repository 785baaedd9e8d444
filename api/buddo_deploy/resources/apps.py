from __future__ import annotations

import uuid
from typing import get_args

import falcon
from pydantic import ValidationError

from ..errors import Unprocessable
from ..schemas import (
    DeploymentCreate,
    DeploymentEnvelope,
    DeploymentList,
    DeploymentStatus,
    DestroyOut,
    LogList,
    StatusOut,
    ValidationContext,
)
from ..services.lifecycle import Lifecycle
from .common import deployment_out, log_entry_out, read_json_object, send

STATUS_FILTERS: tuple[str, ...] = get_args(DeploymentStatus)
MAX_PAGE = 100


def _validation_error(exc: ValidationError) -> Unprocessable:
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        details.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return Unprocessable(f"Validation failed: {summary}", code="validation_failed", details=details)


class AppsResource:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        settings = lifecycle.settings
        self.max_body = settings.max_body_bytes
        self.context = ValidationContext(
            allowed_registries=settings.allowed_registries,
            reserved_subdomains=settings.reserved_subdomains,
            base_domain=settings.base_domain,
        )

    def _send_deployment(self, resp: falcon.Response, deployment: object, status: str = falcon.HTTP_200) -> None:
        url = self.lifecycle.url_for(deployment)  # type: ignore[arg-type]
        send(resp, DeploymentEnvelope(deployment=deployment_out(deployment, url)), status)

    # collection

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw_limit = req.get_param("limit") or "20"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise Unprocessable.for_field("limit", f"must be an integer from 1 to {MAX_PAGE}")
        status = req.get_param("status")
        if status is not None and status not in STATUS_FILTERS:
            raise Unprocessable.for_field("status", f"must be one of {', '.join(STATUS_FILTERS)}")
        include_destroyed = (req.get_param("include_destroyed") or "false").lower()
        if include_destroyed not in {"true", "false", "1", "0"}:
            raise Unprocessable.for_field("include_destroyed", "must be true or false")
        page = self.lifecycle.list_deployments(
            req.context.principal,
            limit=int(raw_limit),
            cursor=req.get_param("cursor"),
            status=status,
            include_destroyed=include_destroyed in {"true", "1"},
        )
        items = [deployment_out(d, self.lifecycle.url_for(d)) for d in page.deployments]
        send(resp, DeploymentList(deployments=items, next_cursor=page.next_cursor))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self.max_body)
        try:
            request = DeploymentCreate.model_validate(body, context=self.context)
        except ValidationError as exc:
            raise _validation_error(exc) from exc
        deployment = self.lifecycle.create_deployment(req.context.principal, request)
        resp.location = f"/api/deploy/apps/{deployment.id}"
        self._send_deployment(resp, deployment, falcon.HTTP_201)

    # item

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        self._send_deployment(resp, self.lifecycle.get_owned(req.context.principal, deployment_id))

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        deployment = self.lifecycle.destroy(req.context.principal, deployment_id)
        send(resp, DestroyOut(message="Deployment destroyed", id=deployment.id))

    def on_get_status(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        send(resp, StatusOut(**self.lifecycle.status_of(req.context.principal, deployment_id)))

    def on_get_logs(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        entries = self.lifecycle.audit_log(req.context.principal, deployment_id)
        send(resp, LogList(logs=[log_entry_out(entry) for entry in entries]))

    def on_post_restart(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        self._send_deployment(resp, self.lifecycle.restart(req.context.principal, deployment_id))

    def on_post_stop(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID) -> None:
        self._send_deployment(resp, self.lifecycle.stop(req.context.principal, deployment_id))
