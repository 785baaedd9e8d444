"""Retention: finished jobs and their playbook events are pruned after ``BUDDO_RETENTION_DAYS``.

What goes: a job that finished (``succeeded`` or ``failed``) more than N days ago, with
its events and targets; an ``output`` job (one per GET .../output, its lines gone once the API read
them) one day after it finished. What stays: every ``queued`` or ``running`` job; the
newest job an audit entry of its deployment (of one of its targets, for a host converge)
names (the deploy log of the entry that
explains the deployment's current state stays readable however old); every audit entry,
forever. An older entry keeps its ``job_id``; the job view then answers 404 saying the
job was pruned (services/jobs.py).

One-off runs that finished (their output is in their row) and webhook deliveries that are
done (sent, or given up) go N days after they were made; a queued or running run and a
delivery still being tried stay.

Deletes run in batches of at most ``BATCH`` rows, each batch its own short transaction,
so the API never waits long for the write lock (SQLite has one writer). Two prunes at
once (the worker's timer, ``buddo-deploy prune``) are safe: a finished job never changes
again and every delete re-checks its rows; the worker's timer takes a lease so that only
one worker does the work.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import peewee

from ..db import write_transaction
from ..models import AuditEntry, Job, JobEvent, JobTarget, Run, WebhookDelivery, database_proxy, utcnow
from ..vocabulary import FINISHED_RUN_STATES
from . import leases

BATCH = 500
# Output jobs hold nothing once read: a day covers any debugging of the queue.
OUTPUT_RETENTION = dt.timedelta(days=1)
FINISHED = ("succeeded", "failed")
LEASE_NAME = "retention"


@dataclass
class PruneReport:
    days: int
    cutoff: dt.datetime | None
    jobs: Counter[str] = field(default_factory=Counter)
    events: int = 0
    deliveries: int = 0
    runs: int = 0
    transactions: int = 0

    @property
    def jobs_removed(self) -> int:
        return sum(self.jobs.values())

    def as_dict(self) -> dict[str, Any]:
        return {"retention_days": self.days,
                "cutoff": self.cutoff.isoformat(timespec="seconds") + "Z" if self.cutoff else None,
                "jobs": self.jobs_removed, "jobs_by_action": dict(sorted(self.jobs.items())),
                "events": self.events, "webhook_deliveries": self.deliveries, "runs": self.runs,
                "transactions": self.transactions}


def _prunable(cutoff: dt.datetime, output_cutoff: dt.datetime) -> peewee.Expression:
    audit = AuditEntry.alias()
    # The newest job an audit entry of the job's deployment names (0: none names one).
    newest_referenced = audit.select(peewee.fn.COALESCE(peewee.fn.MAX(audit.job_id), 0)).where(
        audit.deployment == Job.deployment)
    # ... for a host converge: of any deployment it converged (its targets).
    newest_of_target = audit.select(peewee.fn.MAX(audit.job_id)).where(audit.deployment == JobTarget.deployment)
    explains = JobTarget.select(JobTarget.job).where((JobTarget.job == Job.id) & (Job.id == newest_of_target))
    old = (((Job.action != "output") & (Job.finished_at < cutoff))
           | ((Job.action == "output") & (Job.finished_at < output_cutoff)))
    kept: peewee.Expression = ~peewee.fn.EXISTS(explains)
    return Job.state.in_(FINISHED) & old & (Job.deployment.is_null() | (Job.id != newest_referenced)) & kept


def prune(days: int, *, now: dt.datetime | None = None, batch: int = BATCH) -> PruneReport:
    """Remove what is older than ``days`` (0: keep everything), ``batch`` rows a transaction."""
    if days <= 0:
        return PruneReport(days, None)
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=days)
    report = PruneReport(days, cutoff)
    condition = _prunable(cutoff, max(cutoff, now - OUTPUT_RETENTION))
    db = database_proxy.obj
    # Webhook deliveries that are done (sent, or given up) and one-off runs that finished.
    report.deliveries = _prune_rows(WebhookDelivery, (WebhookDelivery.state != "pending")
                                    & (WebhookDelivery.inserted_at < cutoff), batch, report)
    report.runs = _prune_rows(Run, Run.state.in_(list(FINISHED_RUN_STATES)) & (Run.inserted_at < cutoff), batch,
                              report)
    after = 0
    while True:
        rows = _tuples(Job.select(Job.id, Job.action).where(condition & (Job.id > after)).order_by(Job.id)
                       .limit(batch))
        if not rows:
            return report
        after = rows[-1][0]
        ids = [job_id for job_id, _ in rows]
        while True:  # the events first (they reference their job), a batch at a time
            with write_transaction(db):
                chunk = JobEvent.select(JobEvent.id).where(JobEvent.job.in_(ids)).limit(batch)
                removed = JobEvent.delete().where(JobEvent.id.in_(chunk)).execute()
            report.transactions += 1
            report.events += removed
            if removed < batch:
                break
        with write_transaction(db):
            finished = Job.select(Job.id).where(Job.id.in_(ids) & Job.state.in_(FINISHED))
            JobTarget.delete().where(JobTarget.job.in_(finished)).execute()
            gone = Job.delete().where(Job.id.in_(ids) & Job.state.in_(FINISHED)).execute()
            kept = set() if gone == len(ids) else {row[0] for row in _tuples(Job.select(Job.id).where(Job.id.in_(ids)))}
        report.transactions += 1
        report.jobs.update(action for job_id, action in rows if job_id not in kept)


def _prune_rows(model: Any, condition: peewee.Expression, batch: int, report: PruneReport) -> int:
    """Remove the rows of ``model`` that match, ``batch`` a transaction; how many."""
    removed = 0
    while True:
        with write_transaction(database_proxy.obj):
            chunk = model.select(model.id).where(condition).limit(batch)
            gone = int(model.delete().where(model.id.in_(chunk)).execute())
        report.transactions += 1
        removed += gone
        if gone < batch:
            return removed


def _tuples(query: peewee.ModelSelect[Job]) -> list[tuple[Any, ...]]:
    # The stubs type a select's rows as models; .tuples() gives tuples.
    return list(cast(Iterable[tuple[Any, ...]], query.tuples()))


def take_lease(owner: str, ttl: dt.timedelta, now: dt.datetime | None = None) -> bool:
    """Hold (or renew) the retention lease: one worker at a time prunes."""
    return leases.take(LEASE_NAME, owner, ttl, now or utcnow())


def release_lease(owner: str) -> None:
    leases.release(LEASE_NAME, owner)
