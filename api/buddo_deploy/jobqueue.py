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

Batches: a claim that takes a converge of host H takes, in the same transaction,
every other converge of H that is runnable under the same rules (the earliest of
its lock_key, none behind a queued reconcile of H, due, or a lapsed lease to take
over), up to ``BUDDO_CONVERGE_BATCH`` jobs. The worker runs them in one playbook
run (the converge role reports an outcome per deployment), and each job keeps its
own lease, attempts, backoff and outcome. Reconcile and output jobs are claimed
alone. A batch never holds two jobs of one lock_key, so it never holds two
generations of one deployment. A job whose last run timed out is claimed alone:
a batch that timed out is split up, so one app that hangs (or a batch too big for
``BUDDO_JOB_TIMEOUT``) cannot hold the others back run after run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import peewee

from .db import is_postgres, write_transaction
from .models import Deployment, Job, database_proxy, utcnow

_CLAIM_LOCK = 74_217_001  # pg_advisory_xact_lock key of the claim
# last_error of a run that timed out (runner.run_playbook): such a job is claimed alone.
_TIMED_OUT = "timed out%"


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
SELECT j.id, j.action, j.host, j.last_error FROM jobs j
WHERE ((j.state = 'queued' AND j.run_after <= {p})
       OR (j.state = 'running' AND j.lease_expires_at < {p} AND j.reserved_for IS NULL))
  AND {only}
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
LIMIT {limit}
"""


def claim(owner: str, lease_s: int, *, job_id: int | None = None, batch: int = 1) -> list[Job]:
    """Claim the next runnable job for ``owner`` (or the reserved job ``job_id``); [] when there is none.

    When that job is a converge, up to ``batch`` runnable converges of its host are
    claimed with it (the module's docstring): the first is the job claimed alone
    before, the others are runnable beside it under the same rules. Ordered by id.
    """
    db = database_proxy.obj
    now = utcnow()

    def runnable(only: str, only_params: tuple[object, ...], limit: int) -> list[tuple[Any, ...]]:
        params = (now, now, *only_params, now, now, now)
        return list(db.execute_sql(_CLAIMABLE.format(p=db.param, only=only, limit=int(limit)), params).fetchall())

    with write_transaction(db):
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
        if job_id is None:
            found = runnable("j.reserved_for IS NULL", (), 1)
        else:
            found = runnable(f"j.id = {db.param} AND j.reserved_for = {db.param}", (job_id, owner), 1)
        if not found:
            return []
        first, action, host, last_error = found[0]
        ids = [first]
        if action == "converge" and batch > 1 and not (last_error or "").startswith(_TIMED_OUT.rstrip("%")):
            # Same rules, one host; nothing claimable comes before the first, so it is among them.
            alone = f"j.last_error IS NOT NULL AND j.last_error LIKE {db.param}"
            more = runnable(f"j.reserved_for IS NULL AND j.action = 'converge' AND j.host = {db.param} "
                            f"AND NOT ({alone})", (host, _TIMED_OUT), batch)
            ids = sorted({first, *(row[0] for row in more)})[:batch]
        Job.update(
            state="running",
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            updated_at=now,
            started_at=now,
        ).where(Job.id.in_(ids)).execute()
        return list(Job.select().where(Job.id.in_(ids)).order_by(Job.id))


def _owned(job: Job, owner: str) -> peewee.Expression:
    return (Job.id == job.id) & (Job.lease_owner == owner) & (Job.state == "running")


def renew(jobs: Sequence[Job], owner: str, lease_s: int) -> bool:
    """Extend the leases of a run's jobs; False means another worker has taken one of them over."""
    now = utcnow()
    with write_transaction(database_proxy.obj):
        updated = Job.update(lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now).where(
            (Job.id.in_([job.id for job in jobs])) & (Job.lease_owner == owner) & (Job.state == "running")
        ).execute()
    return bool(updated == len(jobs))


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
