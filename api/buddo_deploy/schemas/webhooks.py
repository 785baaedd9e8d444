"""Outbound webhooks: the endpoint an operator registers, its view, and its delivery log."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from ..vocabulary import DeliveryState, WebhookEvent
from .common import MAX_CURSOR, MAX_PAGE, Timestamp

MAX_URL = 2048
MAX_DESCRIPTION = 255
# A host name or IPv4 address, an optional port, then visible characters; which schemes and
# addresses are allowed depends on the platform's setting (services/webhooks.check_url).
_URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][!-~]*)?$"
_DESCRIPTION_PATTERN = r"^[^\x00-\x1f\x7f]*$"

WebhookEventField = Literal[tuple(WebhookEvent)]  # type: ignore[valid-type]


class WebhookIn(BaseModel):
    """The body of POST /api/deploy/webhooks."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(min_length=8, max_length=MAX_URL, pattern=_URL_PATTERN,
                           description="Where events are POSTed: https (http and private addresses only where "
                                       "BUDDO_WEBHOOK_ALLOW_PRIVATE allows them)")
    event_types: list[WebhookEventField] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, max_length=len(WebhookEvent), description="The events to send (default: all)")
    description: StrictStr | None = Field(None, max_length=MAX_DESCRIPTION, pattern=_DESCRIPTION_PATTERN)


class WebhookUpdate(BaseModel):
    """The body of PATCH /api/deploy/webhooks/{webhook_id}: the fields to change."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr | None = Field(None, min_length=8, max_length=MAX_URL, pattern=_URL_PATTERN)
    event_types: list[WebhookEventField] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, max_length=len(WebhookEvent))
    description: StrictStr | None = Field(None, max_length=MAX_DESCRIPTION, pattern=_DESCRIPTION_PATTERN)
    enabled: StrictBool | None = Field(None, description="true enables an endpoint that was disabled")


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[WebhookEventField]  # type: ignore[valid-type]
    enabled: bool
    disabled_reason: str | None = Field(description="Why it is disabled (it kept failing, or by the operator)")
    failing_since: Timestamp | None = Field(description="Since when every attempt failed (null: the last worked)")
    inserted_at: Timestamp
    updated_at: Timestamp


class WebhookEnvelope(BaseModel):
    webhook: WebhookOut


class WebhookCreated(BaseModel):
    webhook: WebhookOut
    secret: str = Field(description="The signing secret (whsec_...): shown this once, never again")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class WebhookRemoved(BaseModel):
    message: str
    id: uuid.UUID


class DeliveriesQuery(BaseModel):
    """The query of GET /api/deploy/webhooks/{webhook_id}/deliveries (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=MAX_CURSOR, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="next_cursor of the previous page")


class DeliveryOut(BaseModel):
    id: str = Field(description="The message's webhook-id (the same on every attempt)")
    event_type: WebhookEventField  # type: ignore[valid-type]
    state: Literal[tuple(DeliveryState)]  # type: ignore[valid-type]
    attempts: int
    next_attempt_at: Timestamp | None
    last_attempt_at: Timestamp | None
    last_status: int | None = Field(description="The HTTP status of the last attempt (null: no answer)")
    last_error: str | None
    inserted_at: Timestamp
    payload: str = Field(description="The body, as signed")


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut] = Field(description="Newest first")
    next_cursor: str | None
