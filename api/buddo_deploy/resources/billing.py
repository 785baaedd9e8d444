"""GET /api/deploy/billing (the operator's account) and the signed payment webhook."""

from __future__ import annotations

import json
import uuid
from typing import Any

import falcon
from pydantic import ValidationError

from ..schemas import BillingOut, BillingQuery, PaymentIn, PaymentOut, SettledOut
from ..services.billing import Billing, verify_signature
from .common import parse_json_object, parse_query, read_body, send, validation_error

# A payment notification is a few hundred bytes; anything near this is not one.
WEBHOOK_MAX_BYTES = 16 * 1024


class BillingResource:
    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = parse_query(req, BillingQuery)
        view = self.billing.overview(req.context.principal.operator_id, limit=query.limit,
                                     before=int(query.cursor) if query.cursor else None,
                                     deployments_cursor=query.deployments_cursor)
        view["ledger"] = [_entry(e) for e in view["ledger"]]
        send(resp, BillingOut.model_validate(view))


def _entry(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.id, "kind": entry.kind, "track": entry.track, "amount": entry.amount,
        "deployment_id": entry.deployment_id, "cycle": entry.cycle, "reference": entry.reference,
        "details": json.loads(entry.details) if entry.details else None, "created_at": entry.created_at,
    }


class PaymentsResource:
    """Credits from the payment processor: authenticated by the body's signature, not a token."""

    auth_required = False

    def __init__(self, billing: Billing, secret: str | None) -> None:
        self.billing = billing
        self.secret = secret

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = read_body(req, WEBHOOK_MAX_BYTES)
        verify_signature(self.secret, raw, req.get_header("X-Buddo-Signature"))
        try:
            payment = PaymentIn.model_validate(parse_json_object(raw))
        except ValidationError as exc:
            raise validation_error(exc) from exc
        credit = self.billing.credit(payment.operator_id, payment.track, payment.amount, payment.reference,
                                     source="webhook")
        out = PaymentOut(
            reference=payment.reference, operator_id=credit.entry.operator_id, track=credit.entry.track,
            amount=credit.entry.amount, credited_at=credit.entry.created_at, replayed=credit.replayed,
            points_balance=credit.points_balance, sats_balance=credit.sats_balance,
            settled=[SettledOut(deployment_id=d, cycle=c) for d, c in credit.settled],
            reactivated=[uuid.UUID(d) for d in credit.reactivated],
        )
        send(resp, out, falcon.HTTP_200 if credit.replayed else falcon.HTTP_201)
