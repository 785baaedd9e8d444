"""The job queue: the seam between what should be (the database) and the hosts.

Two kinds of job. ``converge``: bring deployment D to at least generation G; a
newer request coalesces with a queued one (ten restarts queued while one runs
cost one more run). ``reconcile``: converge every deployment of one host and
remove orphans (the worker's periodic run, or ``buddo-deploy reconcile``, which
reserves its job for itself).

Workers claim jobs with a lease; a worker that dies stops renewing, its lease
expires and the next claim takes the job over. A run that failed for a reason
outside the app goes back to the queue with a backoff, as often as it takes.
Jobs sharing a ``lock_key`` (host/subdomain: one Caddy site, one container name
family) run one at a time in id order; a reconcile and a converge on the same
host never run at once. Claims are serialised (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: a transaction advisory lock), so those rules hold across processes.
"""

from __future__ import annotations

import datetime as dt

import peewee

from .db import is_postgres, write_transaction
from .models import Deployment, Job, database_proxy, utcnow

_CLAIM_LOCK = 74_217_001  # pg_advisory_xact_lock key of the claim


def enqueue_converge(deployment: Deployment, *, timeout_s: int) -> Job:
    """Make sure a converge of ``deployment`` to its current generation is queued.

    Call inside the transaction that changed the desired state.
    """
    now = utcnow()
    queued = Job.select().where(
        (Job.deployment == deployment.id) & (Job.action == "converge") & (Job.state == "queued")
    ).first()
    if queued is not None:
        Job.update(generation=max(queued.generation, deployment.generation), run_after=now, updated_at=now).where(
            Job.id == queued.id).execute()
        return Job.get_by_id(queued.id)
    return Job.create(
        deployment=deployment.id, action="converge", host=deployment.host,
        lock_key=f"{deployment.host}/{deployment.subdomain}", generation=deployment.generation,
        timeout_s=timeout_s, run_after=now, created_at=now, updated_at=now,
    )


def enqueue_reconcile(host: str, *, timeout_s: int, reserved_for: str | None = None,
                      lease_s: int = 0) -> Job | None:
    """Queue a host-wide reconcile; None when one is already queued.

    A reserved job (``buddo-deploy reconcile``) is claimed by its reserver only; while
    it waits its turn the reserver keeps a lease on it (:func:`hold`), so converges
    queued after it wait for it, and a reserver that died blocks nobody.
    """
    now = utcnow()
    if reserved_for is None and Job.select().where(
        (Job.action == "reconcile") & (Job.host == host) & (Job.state == "queued") & Job.reserved_for.is_null()
    ).exists():
        return None
    return Job.create(
        deployment=None, action="reconcile", host=host, lock_key=f"{host}/" if reserved_for is None else
        f"{host}/#{reserved_for}", timeout_s=timeout_s, run_after=now, reserved_for=reserved_for,
        lease_owner=reserved_for, lease_expires_at=now + dt.timedelta(seconds=lease_s) if reserved_for else None,
        created_at=now, updated_at=now,
    )


def hold(job: Job, owner: str, lease_s: int) -> bool:
    """Keep a reserved, still queued job's place; False when it is gone."""
    now = utcnow()
    with write_transaction(database_proxy.obj):
        return bool(Job.update(lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now).where(
            (Job.id == job.id) & (Job.reserved_for == owner) & (Job.state == "queued")).execute())


def abandon(job: Job, owner: str, error: str) -> None:
    """A reserver gives up a job it never ran."""
    now = utcnow()
    with write_transaction(database_proxy.obj):
        Job.update(state="failed", finished_at=now, updated_at=now, lease_owner=None, last_error=error).where(
            (Job.id == job.id) & (Job.reserved_for == owner) & (Job.state == "queued")).execute()


_CLAIMABLE = """
SELECT j.id FROM jobs j
WHERE ((j.state = 'queued' AND j.run_after <= {p})
       OR (j.state = 'running' AND j.lease_expires_at < {p} AND j.reserved_for IS NULL))
  AND {reserved}
  AND NOT EXISTS (
      SELECT 1 FROM jobs e
      WHERE e.lock_key = j.lock_key AND e.id < j.id AND e.state IN ('queued', 'running'))
  AND NOT EXISTS (
      SELECT 1 FROM jobs r
      WHERE r.host = j.host AND r.id <> j.id AND r.state = 'running' AND r.lease_expires_at >= {p}
        AND (r.action = 'reconcile' OR j.action = 'reconcile'))
  AND (j.action = 'reconcile' OR NOT EXISTS (
      SELECT 1 FROM jobs q
      WHERE q.host = j.host AND q.action = 'reconcile' AND q.state = 'queued' AND q.id < j.id
        AND q.run_after <= {p} AND (q.reserved_for IS NULL OR q.lease_expires_at >= {p})))
ORDER BY j.id
LIMIT 1
"""


def claim(owner: str, lease_s: int, *, job_id: int | None = None) -> Job | None:
    """Claim the next runnable job for ``owner`` (or the reserved job ``job_id``), or None."""
    db = database_proxy.obj
    now = utcnow()
    with write_transaction(db):
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
        params: tuple[object, ...]
        if job_id is None:
            reserved, params = "j.reserved_for IS NULL", (now, now, now, now, now)
        else:
            reserved = f"j.id = {db.param} AND j.reserved_for = {db.param}"
            params = (now, now, job_id, owner, now, now, now)
        row = db.execute_sql(_CLAIMABLE.format(p=db.param, reserved=reserved), params).fetchone()
        if row is None:
            return None
        Job.update(
            state="running",
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            updated_at=now,
            started_at=now,
        ).where(Job.id == row[0]).execute()
        return Job.get_by_id(row[0])


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


def finish(job: Job, owner: str, *, succeeded: bool, error: str | None = None, result: str | None = None) -> bool:
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
        result=result,
    ).where(_owned(job, owner)).execute()
    return bool(updated)


def retry_later(job: Job, owner: str, *, delay: dt.timedelta, error: str) -> bool:
    """Put the job back in the queue after ``delay``; False when the lease was lost."""
    now = utcnow()
    updated = Job.update(
        state="queued", run_after=now + delay, lease_owner=None, lease_expires_at=None, updated_at=now,
        last_error=error,
    ).where(_owned(job, owner)).execute()
    return bool(updated)
