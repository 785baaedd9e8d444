"""Billing: balances, cycles, the ledger and the payment webhook."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from .common import MAX_PAGE, BillingStatusField, BillingTrackField, DeploymentStatusField, LedgerKindField, Timestamp


class BillingQuery(BaseModel):
    """The query of GET /api/deploy/billing (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size of the ledger and of the deployments")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=18, pattern=r"^[0-9]+$",
                                     description="next_cursor of the previous page (the ledger)")
    deployments_cursor: StrictStr | None = Field(None, min_length=1, max_length=200,
                                                 description="deployments_next_cursor of the previous page")


OPERATOR_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@|+-]{0,254}$"
REFERENCE = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}$"
# Balances are BIGINT: no single payment may come near overflowing one.
MAX_PAYMENT = 10**15


class PaymentIn(BaseModel):
    """A payment notification (the signed webhook's body)."""

    model_config = ConfigDict(extra="forbid")

    operator_id: StrictStr = Field(pattern=OPERATOR_ID, description="The operator (the token's subject)")
    track: BillingTrackField = Field(description="buddo_points credits points, bitcoin credits sats")
    amount: StrictInt = Field(gt=0, le=MAX_PAYMENT, description="Points or satoshis, a positive integer")
    reference: StrictStr = Field(pattern=REFERENCE,
                                 description="The payment's id at its source: the idempotency key")


class SettledOut(BaseModel):
    deployment_id: uuid.UUID
    cycle: int


class PaymentOut(BaseModel):
    reference: str
    operator_id: str
    track: BillingTrackField
    amount: int
    credited_at: Timestamp
    replayed: bool = Field(description="True when this reference was credited before: nothing changed now")
    points_balance: int
    sats_balance: int
    settled: list[SettledOut] = Field(description="Outstanding cycles this payment paid, oldest first")
    reactivated: list[uuid.UUID] = Field(description="Suspended deployments this payment reactivated")


class ChargeOut(BaseModel):
    track: BillingTrackField
    amount: int
    at: Timestamp


class OutstandingOut(BaseModel):
    cycle: int
    track: BillingTrackField
    amount: int
    starts_at: Timestamp


class DeploymentBillingOut(BaseModel):
    id: uuid.UUID
    subdomain: str
    tier: str
    status: DeploymentStatusField
    billing_status: BillingStatusField
    next_billing_at: Timestamp
    next_charge: ChargeOut | None = Field(description="Null while no cycle will start (stopped or suspended)")
    outstanding: list[OutstandingOut] = Field(description="Unpaid cycles, oldest first")


class DebtCycleOut(BaseModel):
    deployment_id: uuid.UUID
    subdomain: str
    billing_status: BillingStatusField = Field(description="cancelled: the deployment was destroyed; the cycle is owed")
    cycle: int
    track: BillingTrackField
    amount: int
    starts_at: Timestamp


class DebtOut(BaseModel):
    buddo_points: int = Field(description="Points owed for started cycles not yet paid")
    bitcoin: int = Field(description="Satoshis owed for started cycles not yet paid")
    cycles: list[DebtCycleOut] = Field(description="The oldest unpaid cycles (100 at most), destroyed deployments' "
                                       "included, oldest first: later credits pay them in this order")
    cycles_count: int = Field(description="Every unpaid cycle (the totals above are theirs)")


class LedgerEntryOut(BaseModel):
    id: int
    kind: LedgerKindField
    track: BillingTrackField
    amount: int = Field(description="Signed: a charge is negative")
    deployment_id: uuid.UUID | None
    cycle: int | None
    reference: str | None
    details: Any
    created_at: Timestamp


class BillingOut(BaseModel):
    operator_id: str
    points_balance: int
    sats_balance: int
    billing_enabled: bool
    cycle_seconds: int
    grace_seconds: int
    debt: DebtOut = Field(description="While anything is owed, creating a deployment is refused "
                          "(402 payment_required)")
    deployments: list[DeploymentBillingOut] = Field(description="A page of the live deployments, newest first")
    deployments_next_cursor: str | None = Field(description="Where the next page of deployments starts "
                                                            "(deployments_cursor)")
    ledger: list[LedgerEntryOut] = Field(description="Newest first")
    next_cursor: str | None
