"""The job queue: the seam between the API (which only enqueues) and the workers.

A job names a deployment, an action and the audit entry it completes. Workers
claim jobs with a lease; a worker that dies stops renewing, its lease expires,
and the next claim retries the job (up to ``max_attempts``). Jobs that share a
``lock_key`` (the subdomain: one Caddy site, one container name family) run one
at a time, in id order. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``; SQLite
serialises writers with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from .db import is_postgres, write_transaction
from .models import AuditEntry, Deployment, Job, database_proxy, utcnow

ACTIONS = ("deploy", "restart", "stop", "destroy")


@dataclass(frozen=True)
class Expired:
    """A job whose worker vanished once too often: the caller records the failure."""

    job: Job
    reason: str


def enqueue(
    deployment: Deployment,
    action: str,
    audit_entry: AuditEntry | None,
    *,
    max_attempts: int,
    timeout_s: int,
) -> Job:
    """Add a job; call inside the transaction that changed the desired state."""
    if action not in ACTIONS:
        raise ValueError(f"unknown job action {action!r}")
    now = utcnow()
    return Job.create(
        deployment=deployment,
        audit_entry=audit_entry,
        action=action,
        lock_key=f"{deployment.host}/{deployment.subdomain}",
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        run_after=now,
        created_at=now,
        updated_at=now,
    )


_CLAIMABLE = """
SELECT j.id FROM jobs j
WHERE ((j.state = 'queued' AND j.run_after <= {p})
       OR (j.state = 'running' AND j.lease_expires_at < {p} AND j.attempts < j.max_attempts))
  AND NOT EXISTS (
      SELECT 1 FROM jobs e
      WHERE e.lock_key = j.lock_key AND e.id < j.id AND e.state IN ('queued', 'running'))
ORDER BY j.id
LIMIT 1
"""


def claim(owner: str, lease_s: int, on_expired: Callable[[Expired], None] | None = None) -> Job | None:
    """Claim the next runnable job for ``owner`` or return None.

    Jobs whose lease expired after their last attempt are failed first (through
    ``on_expired``, in the same transaction), so a deployment never waits forever.
    """
    db = database_proxy.obj
    now = utcnow()
    with write_transaction(db):
        for job in _exhausted(now):
            Job.update(
                state="failed", finished_at=now, updated_at=now, lease_owner=None,
                last_error="worker lost: lease expired after the last attempt",
            ).where(Job.id == job.id).execute()
            if on_expired is not None:
                on_expired(Expired(job, f"the worker running it was lost {job.attempts} time(s)"))
        sql = _CLAIMABLE.format(p=db.param)
        if is_postgres(db):
            sql += " FOR UPDATE OF j SKIP LOCKED"
        row = db.execute_sql(sql, (now, now)).fetchone()
        if row is None:
            return None
        Job.update(
            state="running",
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            updated_at=now,
        ).where(Job.id == row[0]).execute()
        return Job.get_by_id(row[0])


def _exhausted(now: dt.datetime) -> list[Job]:
    query = Job.select().where(
        (Job.state == "running") & (Job.lease_expires_at < now) & (Job.attempts >= Job.max_attempts)
    )
    if is_postgres(database_proxy.obj):
        query = query.for_update("FOR UPDATE SKIP LOCKED")  # type: ignore[arg-type]
    return list(query)


def _owned(job: Job, owner: str) -> peewee.Expression:
    return (Job.id == job.id) & (Job.lease_owner == owner) & (Job.state == "running")


def renew(job: Job, owner: str, lease_s: int) -> bool:
    """Extend the lease; False means another worker has taken the job over."""
    now = utcnow()
    with write_transaction(database_proxy.obj):
        updated = Job.update(lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now).where(
            _owned(job, owner)
        ).execute()
    return bool(updated)


def finish(job: Job, owner: str, *, succeeded: bool, error: str | None = None) -> bool:
    """Mark the job done; call inside the transaction that records its outcome.

    Returns False (and changes nothing) when the lease was lost, so the caller
    can roll back the outcome it was about to record.
    """
    now = utcnow()
    updated = Job.update(
        state="succeeded" if succeeded else "failed",
        finished_at=now,
        updated_at=now,
        lease_owner=None,
        last_error=error,
    ).where(_owned(job, owner)).execute()
    return bool(updated)

