"""The caller's webhook endpoints (CRUD) and each one's delivery log."""

from __future__ import annotations

import json
import uuid
from typing import Any

import falcon

from ..schemas import (
    DeliveriesQuery,
    DeliveryList,
    DeliveryOut,
    WebhookCreated,
    WebhookEnvelope,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookRemoved,
    WebhookUpdate,
)
from ..services.webhooks import Webhooks
from .common import parse_query, read_model, send


class WebhooksResource:
    def __init__(self, webhooks: Webhooks, max_body: int) -> None:
        self.webhooks = webhooks
        self.max_body = max_body

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        endpoints = self.webhooks.endpoints(req.context.principal.operator_id)
        send(resp, WebhookList(webhooks=[webhook_out(e) for e in endpoints]))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = read_model(req, WebhookIn, self.max_body)
        endpoint, secret = self.webhooks.create(req.context.principal.operator_id, request.url,
                                                request.event_types, request.description)
        resp.location = f"/api/deploy/webhooks/{endpoint.id}"
        send(resp, WebhookCreated(webhook=webhook_out(endpoint), secret=secret), falcon.HTTP_201)

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        send(resp, WebhookEnvelope(webhook=webhook_out(self.webhooks.get(req.context.principal.operator_id,
                                                                          webhook_id))))

    def on_patch_item(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        request = read_model(req, WebhookUpdate, self.max_body)
        changes = request.model_dump(exclude_unset=True)
        endpoint = self.webhooks.update(req.context.principal.operator_id, webhook_id, changes)
        send(resp, WebhookEnvelope(webhook=webhook_out(endpoint)))

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        self.webhooks.delete(req.context.principal.operator_id, webhook_id)
        send(resp, WebhookRemoved(message="Webhook endpoint deleted", id=webhook_id))

    def on_get_deliveries(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        query = parse_query(req, DeliveriesQuery)
        rows, next_cursor = self.webhooks.deliveries(req.context.principal.operator_id, webhook_id,
                                                     limit=query.limit, cursor=query.cursor)
        send(resp, DeliveryList(deliveries=[_delivery_out(row) for row in rows], next_cursor=next_cursor))


def webhook_out(endpoint: Any) -> WebhookOut:
    # The secret never leaves after its creation: WebhookOut has no field for it.
    return WebhookOut(id=endpoint.id, url=endpoint.url, description=endpoint.description,
                      event_types=json.loads(endpoint.event_types), enabled=endpoint.enabled,
                      disabled_reason=endpoint.disabled_reason, failing_since=endpoint.failing_since,
                      inserted_at=endpoint.inserted_at, updated_at=endpoint.updated_at)


def _delivery_out(row: Any) -> DeliveryOut:
    return DeliveryOut(id=row.id, event_type=row.event_type, state=row.state, attempts=row.attempts,
                       next_attempt_at=row.next_attempt_at, last_attempt_at=row.last_attempt_at,
                       last_status=row.last_status, last_error=row.last_error, inserted_at=row.inserted_at,
                       payload=row.payload)
