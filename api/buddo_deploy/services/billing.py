"""Billing: operator accounts, rolling cycles, an append-only ledger, suspension and reactivation.

A deployment's cycles are numbered from 0; cycle ``n`` starts at ``next_billing_at``
when ``deployments.billing_cycle`` is ``n``. Starting a cycle inserts its row in
``billing_cycles`` (unique per deployment and cycle: two passes racing for a cycle
start it once) as *unpaid*; the operator's outstanding cycles are then paid oldest
first, per track, from the balance. A paid cycle writes a ``charge`` and a
``stipend`` ledger entry (unique per deployment, cycle and kind). A deployment with
an unpaid cycle is ``past_due``; when the oldest unpaid cycle is older than the
grace, it is suspended (desired state ``stopped``, which the engine converges). A
credit pays what is outstanding and reactivates what it paid for.

Cycle 0 is started and paid by the create itself, in its transaction: an account
that owes anything, or whose balance on the tier's track does not cover the cycle,
cannot create (402 ``payment_required``). A started cycle is owed whatever happens
to the deployment afterwards: destroying it ends its billing but not its debt, which
later credits pay first.

Locks are taken in one order everywhere: the operator's account, then deployments,
then cycles. The API's lifecycle locks no account, except a create's (after the create
lock, before its new deployment exists).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import peewee

from ..db import lock_row, write_transaction
from ..domain_errors import Conflict, Invalid, PaymentRequired, Unauthenticated, Unavailable
from ..models import (
    BillingAccount,
    BillingCycle,
    Deployment,
    LedgerEntry,
    Tier,
    database_proxy,
    utcnow,
)
from ..settings import Settings
from . import leases, pages, state

log = logging.getLogger(__name__)

BALANCE = {"buddo_points": "points_balance", "bitcoin": "sats_balance"}
UNIT = {"buddo_points": "points", "bitcoin": "sats"}
LEASE_NAME = "billing"
# The unpaid cycles GET /billing lists at most (the oldest: the next credits pay them first).
DEBT_CYCLES = 100
# How often a long pass renews its lease (the lease lasts 30 s at least).
RENEW_S = 5.0
# Statuses whose cycles still start while the operator wants the app running.
BILLABLE = ("active", "past_due")


class ReferenceConflict(Conflict):
    def __init__(self, reference: str) -> None:
        super().__init__(
            f"Reference '{reference}' was already used for a different payment", code="reference_conflict",
            details={"reference": reference},
        )


@dataclass(frozen=True)
class Policy:
    enabled: bool
    cycle: dt.timedelta
    grace: dt.timedelta
    starting_points: int
    starting_sats: int
    timeout_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            enabled=settings.billing_enabled, cycle=dt.timedelta(seconds=settings.billing_cycle_s),
            grace=dt.timedelta(seconds=settings.billing_grace_s), starting_points=settings.billing_starting_points,
            starting_sats=settings.billing_starting_sats, timeout_s=settings.job_timeout_s,
        )


@dataclass
class PassReport:
    started: list[tuple[str, int]] = field(default_factory=list)
    paid: list[tuple[str, int]] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def merge(self, other: PassReport) -> None:
        for name in ("started", "paid", "suspended", "reactivated", "failed"):
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True)
class Credit:
    entry: LedgerEntry
    replayed: bool
    points_balance: int
    sats_balance: int
    settled: list[tuple[str, int]]
    reactivated: list[str]


def price_of(tier: Tier) -> tuple[str, int]:
    """The track a tier's cycles are charged to, and a cycle's price on it."""
    if tier.payment_method == "bitcoin":
        return "bitcoin", int(tier.monthly_cost_sats or 0)
    return "buddo_points", int(tier.monthly_cost_points or 0)


def _locked_account(operator_id: str) -> BillingAccount:
    account = lock_row(BillingAccount, operator_id)
    if account is None:  # callers open it first
        raise BillingAccount.DoesNotExist(  # type: ignore[attr-defined]  # peewee makes it per model
            f"no billing account of {operator_id}")
    return cast(BillingAccount, account)


class Billing:
    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.clock = clock

    # --- accounts and the ledger ------------------------------------------

    def open_account(self, operator_id: str, now: dt.datetime) -> bool:
        """Open the operator's account with the starting balances if it is new (in a transaction)."""
        if BillingAccount.get_or_none(BillingAccount.operator_id == operator_id) is not None:
            return False
        try:
            with database_proxy.obj.atomic():  # the primary key decides who opens it
                BillingAccount.create(operator_id=operator_id, points_balance=0, sats_balance=0,
                                      created_at=now, updated_at=now)
        except peewee.IntegrityError:
            return False
        for track, amount in (("buddo_points", self.policy.starting_points),
                              ("bitcoin", self.policy.starting_sats)):
            if amount > 0:
                self._move(operator_id, track, amount, "adjustment", now, details={"reason": "starting balance"})
        return True

    def _move(self, operator_id: str, track: str, amount: int, kind: str, now: dt.datetime, *,
              deployment_id: Any = None, cycle: int | None = None, reference: str | None = None,
              details: dict[str, Any] | None = None) -> LedgerEntry | None:
        """One ledger entry and the balance in step with it; None when a debit exceeds the balance."""
        column = getattr(BillingAccount, BALANCE[track])
        query = BillingAccount.update({column: column + amount, BillingAccount.updated_at: now}).where(
            BillingAccount.operator_id == operator_id)
        if amount < 0:
            query = query.where(column >= -amount)
        if query.execute() != 1:
            return None
        entry: LedgerEntry = LedgerEntry.create(
            operator_id=operator_id, kind=kind, track=track, amount=amount, deployment=deployment_id, cycle=cycle,
            reference=reference, details=json.dumps(details) if details else None, created_at=now,
        )
        return entry

    def debt(self, operator_id: str) -> dict[str, int]:
        """What the operator owes per track: every unpaid cycle, destroyed deployments' included."""
        return _owed(operator_id)[0]

    # --- the create (called inside the lifecycle's transaction, creates serialised) ------------

    def admit(self, operator_id: str, tier: Tier, now: dt.datetime) -> dict[str, Any]:
        """Refuse a create the account cannot pay for; the new deployment's billing fields.

        Its first cycle is charged by :meth:`charge_first_cycle` right after the insert, so
        the balance must cover it, and an account that owes for cycles already started
        pays that first. The account stays locked until the create's transaction ends.
        """
        if not self.policy.enabled:
            return {"billing_cycle": 0, "next_billing_at": now}  # the pass charges it if billing is turned on
        self.open_account(operator_id, now)
        account = _locked_account(operator_id)
        track, price = price_of(tier)
        balance = int(getattr(account, BALANCE[track]))
        debt = self.debt(operator_id)
        unit = UNIT[track]
        details: dict[str, Any] = {"tier": tier.slug, "track": track, "price": price, "balance": balance,
                                   "debt": debt}
        if any(debt.values()):
            owed = " and ".join(f"{amount} {UNIT[t]}" for t, amount in debt.items() if amount)
            raise PaymentRequired(
                f"The account owes {owed} for billing cycles already started; a credit pays them first, "
                "then deployments can be created again", details={"reason": "unpaid_debt", **details})
        if balance < price:
            raise PaymentRequired(
                f"Tier '{tier.slug}' costs {price} {unit} a cycle, charged at creation; the {unit} balance is "
                f"{balance}", details={"reason": "insufficient_balance", "shortfall": price - balance, **details})
        return {"billing_cycle": 1, "next_billing_at": now + self.policy.cycle}

    def charge_first_cycle(self, d: Deployment) -> None:
        """Start and pay cycle 0 of a deployment just inserted (after :meth:`admit`, same transaction)."""
        if not self.policy.enabled:
            return
        tier = Tier.get_by_id(d.tier_id)
        track, amount = price_of(tier)
        cycle: BillingCycle = BillingCycle.create(
            deployment=d.id, cycle=0, operator_id=d.operator_id, track=track, amount=amount,
            stipend_points=tier.monthly_stipend_points or 0, starts_at=d.inserted_at, state="unpaid",
            created_at=d.inserted_at,
        )
        if not self._pay(cycle, d.inserted_at):  # admit checked it under the account's lock
            raise PaymentRequired(f"The balance no longer covers the first cycle of tier '{tier.slug}'",
                                  details={"reason": "insufficient_balance", "tier": tier.slug, "track": track,
                                           "price": amount})

    # --- the clock --------------------------------------------------------

    def run_pass(self, now: dt.datetime | None = None, renew: Callable[[], bool] | None = None) -> PassReport:
        """Start every due cycle (each once, also those a stopped clock missed), suspend what lapsed.

        ``renew`` (the worker's lease on the pass) is called every RENEW_S while it goes on; the
        pass stops when it says the lease is lost, so two workers never run one at once.
        """
        report = PassReport()
        if not self.policy.enabled:
            return report
        now = now or self.clock()
        due = (Deployment.select(Deployment.id, Deployment.operator_id)
               .where((Deployment.desired_state == "running") & Deployment.billing_status.in_(BILLABLE)
                      & ((Deployment.next_billing_at <= now) | (Deployment.billing_status == "past_due")))
               .order_by(Deployment.next_billing_at, Deployment.id))
        renewed = time.monotonic()
        for row in list(due):
            if renew is not None and time.monotonic() - renewed >= RENEW_S:
                if not renew():
                    log.warning("billing: the lease was lost; this pass stops (its holder bills the rest)")
                    return report
                renewed = time.monotonic()
            try:
                with write_transaction(database_proxy.obj):
                    report.merge(self._advance(row.operator_id, row.id, now))
            except Exception:  # one deployment's failure must not stop the others' billing
                log.exception("billing of deployment %s failed", row.id)
                report.failed.append(str(row.id))
        return report

    def _advance(self, operator_id: str, deployment_id: Any, now: dt.datetime) -> PassReport:
        report = PassReport()
        self.open_account(operator_id, now)
        _locked_account(operator_id)
        while True:
            d = state.locked(deployment_id)
            if d is None or d.desired_state != "running" or d.billing_status not in BILLABLE:
                return report  # changed since the pass listed it
            oldest = self._oldest_unpaid(d.id)
            lapse = oldest.starts_at + self.policy.grace if oldest is not None else None
            due = d.next_billing_at if d.next_billing_at <= now else None
            if lapse is not None and lapse <= now and (due is None or lapse <= due):
                assert oldest is not None
                self._suspend(d, oldest)
                report.suspended.append(str(d.id))
                return report
            if due is None:
                return report
            self._start_cycle(d, due, now, report)

    def _oldest_unpaid(self, deployment_id: Any) -> BillingCycle | None:
        found: BillingCycle | None = (BillingCycle.select()
                                      .where((BillingCycle.deployment == deployment_id)
                                             & (BillingCycle.state == "unpaid"))
                                      .order_by(BillingCycle.cycle).first())
        return found

    def _start_cycle(self, d: Deployment, starts_at: dt.datetime, now: dt.datetime, report: PassReport) -> None:
        tier = Tier.get_by_id(d.tier_id)
        track, amount = price_of(tier)
        number = d.billing_cycle
        try:
            with database_proxy.obj.atomic():  # the unique key, not a prior check, makes it start once
                BillingCycle.create(
                    deployment=d.id, cycle=number, operator_id=d.operator_id, track=track, amount=amount,
                    stipend_points=tier.monthly_stipend_points or 0, starts_at=starts_at, state="unpaid",
                    created_at=now,
                )
            report.started.append((str(d.id), number))
        except peewee.IntegrityError:
            log.info("cycle %s of %s was started by another pass", number, d.id)
        Deployment.update(billing_cycle=number + 1, next_billing_at=starts_at + self.policy.cycle).where(
            (Deployment.id == d.id) & (Deployment.billing_cycle == number)).execute()
        for other in self._settle(d.operator_id, now, report):
            if other != d.id:  # a stipend may have paid another deployment's older cycle
                self._refresh(other, now, report, reason="stipend_received")
        self._refresh(d.id, now, report, reason="cycle_started")

    def _suspend(self, d: Deployment, oldest: BillingCycle) -> None:
        unit = UNIT[oldest.track]
        details = {
            "reason": "payment_lapsed", "cycle": oldest.cycle, "track": oldest.track, "amount": oldest.amount,
            "message": (f"cycle {oldest.cycle} ({oldest.amount} {unit}, due {oldest.starts_at.isoformat()}Z) "
                        f"is unpaid and the grace of {int(self.policy.grace.total_seconds())} s has ended"),
        }
        state.change(d, "suspend", None, timeout_s=self.policy.timeout_s, details=details,
                     desired_state="stopped", billing_status="suspended")
        log.info("suspended %s (%s): %s", d.subdomain, d.id, details["message"])

    # --- payments ---------------------------------------------------------

    def _settle(self, operator_id: str, now: dt.datetime, report: PassReport) -> list[Any]:
        """Pay the operator's outstanding cycles oldest first (per track); the deployments paid for.

        Destroyed deployments' cycles count too: a started cycle is owed. The caller holds
        the account's lock. Each step reads one cycle, a track's oldest unpaid (a seek on
        ``billing_cycles_track_open``): an account that cannot pay costs a read per track,
        however much it owes, so a pass over its cycles is linear in them.
        """
        paid: list[Any] = []
        while True:
            blocked: set[str] = set()
            progressed = False
            for track in UNIT:
                while (cycle := self._oldest_owed(operator_id, track)) is not None:
                    state.locked(cycle.deployment_id)
                    if not self._pay(cycle, now):
                        blocked.add(track)  # strictly oldest first: a newer one must not jump the queue
                        break
                    progressed = True
                    report.paid.append((str(cycle.deployment_id), cycle.cycle))
                    if cycle.deployment_id not in paid:
                        paid.append(cycle.deployment_id)
            # A stipend paid on the way may now cover a points cycle that was blocked: once more.
            if not (progressed and blocked):
                return paid

    @staticmethod
    def _oldest_owed(operator_id: str, track: str) -> BillingCycle | None:
        found: BillingCycle | None = (BillingCycle.select()
                                      .where((BillingCycle.operator_id == operator_id)
                                             & (BillingCycle.state == "unpaid") & (BillingCycle.track == track))
                                      .order_by(BillingCycle.starts_at, BillingCycle.id).first())
        return found

    def _pay(self, cycle: BillingCycle, now: dt.datetime) -> bool:
        fresh = BillingCycle.get_by_id(cycle.id)
        if fresh.state != "unpaid":
            return True
        if cycle.amount and self._move(cycle.operator_id, cycle.track, -cycle.amount, "charge", now,
                                       deployment_id=cycle.deployment_id, cycle=cycle.cycle) is None:
            return False
        if BillingCycle.update(state="paid", paid_at=now).where(
                (BillingCycle.id == cycle.id) & (BillingCycle.state == "unpaid")).execute() != 1:
            raise RuntimeError(f"cycle {cycle.id} was paid twice")  # rolls the whole transaction back
        if cycle.stipend_points:
            self._move(cycle.operator_id, "buddo_points", cycle.stipend_points, "stipend", now,
                       deployment_id=cycle.deployment_id, cycle=cycle.cycle)
        return True

    def _refresh(self, deployment_id: Any, now: dt.datetime, report: PassReport, *, reason: str,
                 reference: str | None = None) -> None:
        """Bring billing_status in line with the unpaid cycles; reactivate a paid-up suspended deployment."""
        d = state.locked(deployment_id)
        if d is None or d.billing_status == "cancelled":
            return
        unpaid = self._oldest_unpaid(d.id) is not None
        if unpaid and d.billing_status == "active":
            Deployment.update(billing_status="past_due", updated_at=now).where(Deployment.id == d.id).execute()
        elif not unpaid and d.billing_status == "past_due":
            Deployment.update(billing_status="active", updated_at=now).where(Deployment.id == d.id).execute()
        elif not unpaid and d.billing_status == "suspended":
            details: dict[str, Any] = {"reason": reason,
                                       "message": "the outstanding charges are paid; a new cycle starts now"}
            if reference:
                details["reference"] = reference
            # The cycle just paid covers the time from now: suspended time is never billed.
            state.change(d, "reactivate", None, timeout_s=self.policy.timeout_s, details=details,
                         desired_state="running", billing_status="active", next_billing_at=now + self.policy.cycle)
            report.reactivated.append(str(d.id))
            log.info("reactivated %s (%s)", d.subdomain, d.id)

    def credit(self, operator_id: str, track: str, amount: int, reference: str, *, source: str,
               now: dt.datetime | None = None) -> Credit:
        """Credit an account once per reference, then pay what is outstanding and reactivate."""
        if track not in BALANCE:
            raise Invalid.for_field("track", f"must be one of {', '.join(BALANCE)}")
        if amount <= 0:
            raise Invalid.for_field("amount", "must be a positive integer")
        now = now or self.clock()
        report = PassReport()
        with write_transaction(database_proxy.obj):
            self.open_account(operator_id, now)
            _locked_account(operator_id)
            original = LedgerEntry.get_or_none(LedgerEntry.reference == reference)
            if original is not None:
                return self._replay(original, operator_id, track, amount)
            try:
                with database_proxy.obj.atomic():
                    entry = self._move(operator_id, track, amount, "credit", now, reference=reference,
                                       details={"source": source})
            except peewee.IntegrityError:
                # The same reference for another operator, committed while we waited.
                original = LedgerEntry.get(LedgerEntry.reference == reference)
                return self._replay(original, operator_id, track, amount)
            assert entry is not None
            for deployment_id in self._settle(operator_id, now, report):
                self._refresh(deployment_id, now, report, reason="payment_received", reference=reference)
            account = BillingAccount.get_by_id(operator_id)
        return Credit(entry, False, account.points_balance, account.sats_balance, report.paid, report.reactivated)

    @staticmethod
    def _replay(original: LedgerEntry, operator_id: str, track: str, amount: int) -> Credit:
        if (original.kind, original.operator_id, original.track, original.amount) != (
                "credit", operator_id, track, amount):
            raise ReferenceConflict(str(original.reference))
        account = BillingAccount.get_by_id(operator_id)
        return Credit(original, True, account.points_balance, account.sats_balance, [], [])

    # --- the lifecycle's hooks (called inside its transaction, the deployment locked) --------

    def on_restart(self, d: Deployment, now: dt.datetime) -> dict[str, Any]:
        """What a restart changes about billing; a suspended deployment waits for payment."""
        if d.billing_status == "suspended":
            raise Invalid(
                "The deployment is suspended for non-payment; it restarts by itself once the account is credited",
                code="deployment_suspended", details={"billing_status": "suspended"},
            )
        if d.desired_state == "stopped" and d.next_billing_at < now:
            # The paid cycle ran out while the operator had it stopped: a new run of
            # cycles starts with the restart (charged then), nothing is owed for the gap.
            return {"next_billing_at": now}
        return {}

    def lock_account(self, operator_id: str, now: dt.datetime) -> None:
        """Open and lock the operator's account before its deployment (the lock order), for a
        change that bills at once (a tier change)."""
        if self.policy.enabled:
            self.open_account(operator_id, now)
            _locked_account(operator_id)

    def on_tier_change(self, d: Deployment, tier: Tier, now: dt.datetime) -> dict[str, Any]:
        """A tier change starts a new cycle at the new tier's price now, paid now; the unused part
        of the current cycle is credited back pro rata (an ``adjustment`` on its track), and the
        unused part of its stipend is taken from the new cycle's (or from the points balance).
        402 (nothing changes) when the account owes anything or cannot pay the new cycle.
        Call with the account locked (:meth:`lock_account`), then the deployment."""
        if not self.policy.enabled:
            return {}
        operator = d.operator_id
        track, price = price_of(tier)
        details: dict[str, Any] = {"tier": tier.slug, "track": track, "price": price}
        debt = self.debt(operator)
        if any(debt.values()):
            raise PaymentRequired("The account owes for billing cycles already started; a credit pays them "
                                  "first, then the tier can change", details={"reason": "unpaid_debt", "debt": debt,
                                                                               **details})
        current: BillingCycle | None = BillingCycle.get_or_none(
            (BillingCycle.deployment == d.id) & (BillingCycle.cycle == d.billing_cycle - 1))
        unused = 0.0
        if current is not None and current.state == "paid" and d.next_billing_at > now:
            unused = min(1.0, (d.next_billing_at - now) / self.policy.cycle)
        why = {"reason": "tier_change", "from_tier": d.tier.slug, "to_tier": tier.slug,
               "unused_fraction": round(unused, 6)}
        stipend = int(tier.monthly_stipend_points or 0)
        if current is not None and unused > 0:
            refund = int(current.amount * unused)
            if refund:
                self._move(operator, current.track, refund, "adjustment", now, deployment_id=d.id,
                           cycle=current.cycle, details=why)
            stipend -= int(current.stipend_points * unused)
        if stipend < 0:  # the old stipend's unused part is more than the new one
            # Not keyed to the cycle: the cycle's price refund above is (one adjustment per cycle).
            if self._move(operator, "buddo_points", stipend, "adjustment", now, deployment_id=d.id,
                          details={**why, "reason": "tier_change_unused_stipend",
                                   "cycle": current.cycle if current else None}) is None:
                raise PaymentRequired(f"The unused part of this cycle's stipend ({-stipend} points) is more than "
                                      "the points balance", details={"reason": "insufficient_balance",
                                                                     "shortfall": -stipend, **details})
            stipend = 0
        number = d.billing_cycle
        cycle: BillingCycle = BillingCycle.create(
            deployment=d.id, cycle=number, operator_id=operator, track=track, amount=price, stipend_points=stipend,
            starts_at=now, state="unpaid", created_at=now)
        if not self._pay(cycle, now):
            balance = int(getattr(BillingAccount.get_by_id(operator), BALANCE[track]))
            raise PaymentRequired(
                f"Tier '{tier.slug}' costs {price} {UNIT[track]} a cycle, charged now; the {UNIT[track]} balance "
                f"(with the unused part of the current cycle credited) is {balance}",
                details={"reason": "insufficient_balance", "shortfall": price - balance, "balance": balance,
                         **details})
        return {"billing_cycle": number + 1, "next_billing_at": now + self.policy.cycle}

    @staticmethod
    def on_stop(d: Deployment) -> dict[str, Any]:
        """An operator's stop of a suspended deployment: still owing, but no longer the platform's to restart."""
        return {"billing_status": "past_due"} if d.billing_status == "suspended" else {}

    @staticmethod
    def on_destroy(d: Deployment) -> dict[str, Any]:
        """A destroyed deployment starts no more cycles; those it started and did not pay stay owed."""
        return {"billing_status": "cancelled"}

    # --- the worker's lease -------------------------------------------------

    def take_lease(self, owner: str, ttl: dt.timedelta, now: dt.datetime | None = None) -> bool:
        """Hold (or renew) the billing lease: one worker at a time runs the pass."""
        return leases.take(LEASE_NAME, owner, ttl, now or self.clock())

    def release_lease(self, owner: str) -> None:
        leases.release(LEASE_NAME, owner)

    # --- reads --------------------------------------------------------------

    def overview(self, operator_id: str, *, limit: int, before: int | None,
                 deployments_cursor: str | None = None) -> dict[str, Any]:
        """Balances, the debt (its totals, and its oldest DEBT_CYCLES cycles), a page of the live
        deployments' billing (newest first) and a page of the ledger (newest first): the same
        statements and rows for an operator with ten deployments or ten thousand."""
        if BillingAccount.get_or_none(BillingAccount.operator_id == operator_id) is None:
            with write_transaction(database_proxy.obj):
                self.open_account(operator_id, self.clock())
        account = BillingAccount.get_by_id(operator_id)
        listing = (Deployment.select(Deployment, Tier).join(Tier)
                   .where((Deployment.operator_id == operator_id) & (Deployment.desired_state != "absent"))
                   .order_by(Deployment.inserted_at.desc(), Deployment.id.desc()))
        deployments, deployments_next = pages.page(listing, Deployment, deployments_cursor, limit, newest_first=True)
        outstanding = _outstanding(d.id for d in deployments)
        query = LedgerEntry.select().where(LedgerEntry.operator_id == operator_id)
        if before is not None:
            query = query.where(LedgerEntry.id < before)
        entries = list(query.order_by(LedgerEntry.id.desc()).limit(limit + 1))
        return {
            "operator_id": operator_id,
            "points_balance": account.points_balance,
            "sats_balance": account.sats_balance,
            "billing_enabled": self.policy.enabled,
            "cycle_seconds": int(self.policy.cycle.total_seconds()),
            "grace_seconds": int(self.policy.grace.total_seconds()),
            "debt": _debt_view(operator_id),
            "deployments": [self._deployment_billing(d, outstanding.get(str(d.id), [])) for d in deployments],
            "deployments_next_cursor": deployments_next,
            "ledger": entries[:limit],
            "next_cursor": str(entries[limit - 1].id) if len(entries) > limit else None,
        }

    def _deployment_billing(self, d: Deployment, unpaid: list[BillingCycle]) -> dict[str, Any]:
        track, amount = price_of(d.tier)
        # A cycle starts only while the operator wants the app running (and it is not suspended).
        billed = self.policy.enabled and d.desired_state == "running" and d.billing_status in BILLABLE
        return {
            "id": d.id, "subdomain": d.subdomain, "tier": d.tier.slug, "status": d.status,
            "billing_status": d.billing_status, "next_billing_at": d.next_billing_at,
            "next_charge": {"track": track, "amount": amount, "at": d.next_billing_at} if billed else None,
            "outstanding": [{"cycle": c.cycle, "track": c.track, "amount": c.amount, "starts_at": c.starts_at}
                            for c in unpaid],
        }


def _outstanding(deployment_ids: Iterable[Any]) -> dict[str, list[BillingCycle]]:
    ids = [str(i) for i in deployment_ids]
    found: dict[str, list[BillingCycle]] = {}
    if not ids:
        return found
    for cycle in (BillingCycle.select().where(BillingCycle.deployment.in_(ids) & (BillingCycle.state == "unpaid"))
                  .order_by(BillingCycle.cycle)):
        found.setdefault(str(cycle.deployment_id), []).append(cycle)
    return found


def _owed(operator_id: str) -> tuple[dict[str, int], int]:
    """What the operator owes per track, and in how many cycles (summed by the database)."""
    owed, count = dict.fromkeys(BALANCE, 0), 0
    rows = cast(Iterable[tuple[Any, ...]], (  # .tuples() rows; the stubs type a select's rows as models
        BillingCycle.select(BillingCycle.track, peewee.fn.SUM(BillingCycle.amount), peewee.fn.COUNT(BillingCycle.id))
        .where((BillingCycle.operator_id == operator_id) & (BillingCycle.state == "unpaid"))
        .group_by(BillingCycle.track).tuples()))
    for track, total, cycles in rows:
        owed[track] = int(total or 0)
        count += int(cycles)
    return owed, count


def _debt_view(operator_id: str) -> dict[str, Any]:
    """What the operator owes per track and in how many cycles (summed by the database), and the
    oldest DEBT_CYCLES unpaid cycles, destroyed deployments' included (the next credits pay them)."""
    totals, count = _owed(operator_id)
    view: dict[str, Any] = dict(totals)
    unpaid = (BillingCycle.operator_id == operator_id) & (BillingCycle.state == "unpaid")
    cycles = list(BillingCycle.select(BillingCycle, Deployment).join(Deployment).where(unpaid)
                  .order_by(BillingCycle.starts_at, BillingCycle.id).limit(DEBT_CYCLES)) if count else []
    view["cycles_count"] = count
    view["cycles"] = [{"deployment_id": c.deployment_id, "subdomain": c.deployment.subdomain,
                       "billing_status": c.deployment.billing_status, "cycle": c.cycle, "track": c.track,
                       "amount": c.amount, "starts_at": c.starts_at} for c in cycles]
    return view


def new_reference() -> str:
    return f"cli-{uuid.uuid4()}"


# The whole header, ASCII only: one signature, 64 hex digits. Anything else (another scheme,
# non-ASCII, a wrong length, two headers joined by the server) is refused before any compare.
_SIGNATURE = re.compile(r"sha256=([0-9A-Fa-f]{64})")


def verify_signature(secret: str | None, body: bytes, header: str | None) -> None:
    """The webhook's ``X-Buddo-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.

    Whatever the header holds, the answer is 401 ``invalid_signature`` (never the header's
    text back, never a 500): the digests are compared as bytes, in constant time.
    """
    if not secret:
        raise Unavailable("Payment webhook is not configured (BUDDO_BILLING_WEBHOOK_SECRET)",
                          code="webhook_disabled")
    if header is None or not header.strip(" \t"):
        raise Unauthenticated("Missing X-Buddo-Signature header", code="invalid_signature")
    match = _SIGNATURE.fullmatch(header.strip(" \t"))
    if match is None:
        raise Unauthenticated("X-Buddo-Signature must be one 'sha256=<64 hex digits>'", code="invalid_signature")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, bytes.fromhex(match.group(1))):
        raise Unauthenticated("The signature does not match the body", code="invalid_signature")
