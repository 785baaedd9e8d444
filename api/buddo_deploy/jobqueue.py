"""The job queue: the seam between what should be (the database) and the hosts.

Work is queued per host (controller-runtime's key-only request). ``converge``: a change
marks its deployment's host as needing a converge; a host has at most one queued
converge (beside the solo ones below), which every later change joins as a target (the
deployment and the generation to reach: ten restarts queued while one runs cost one more
run). A change whose deployment has an outcome in that job already (a retried run
converged or failed it) opens its target again, at the new generation. A worker runs the
host's open targets in one playbook run and records each deployment's outcome on its
target. A job that has more than one target is *shared* (:func:`shared`): what its runs
record for every target to read (events, the run's error) has a failure's text withheld
(:data:`SHARED_FAILURE`), in a retry that runs one of them too; a job that gets its second
target has it withheld in the events it recorded before.
``reconcile``: converge every deployment of one host and remove orphans (the worker's
periodic run, or ``buddo-deploy reconcile``, which reserves its job for itself).
``output``: read one deployment's container output.

Workers claim jobs with a lease; a worker that dies stops renewing, its lease expires
and the next claim takes the job over. A run that failed for a reason outside the apps
goes back to the queue with a backoff, as often as it takes. A deployment (and a
subdomain: one site file, one container name family) is converged by one run at a time,
in order: a host's converge waits for an earlier one only when they share one (the next
changes of a host start while the first ones still come up), and for a running one that
shares one however late it was queued: a change may join a retried converge that is older
than a run of its deployment queued while the retried one ran.
A run that timed out may hang again on whichever deployment made it hang, so its
deployments are retried alone: a *solo* converge holds one deployment, which it keeps
(its later changes join it, or queue the next solo one behind it) until that deployment
has an outcome; new changes of the host never join it. A run of a shared job that timed
out ends there and each deployment it ran goes on in a solo converge of its own
(:func:`retry_alone`); a job of one target retries as a solo one (:func:`retry_later`).
A deployment that goes alone takes its changes queued while its run hung out of the host's
ordinary converges into its solo converge (the later generation wins; its open audit
entries name the solo converge): left there, they would hold that converge, and every
change of the host that joins it, behind the solo one, or run the suspect again in a
shared run. An ordinary converge left with nothing to do is finished as its next run would
finish it, or gone when it never ran and has no target left. The other deployments'
converges then run beside a suspect's, which waits only for its own.
A reconcile never runs beside another running job of its host (a suspect's solo converge
included); it waits for the host's jobs queued before it, and ordinary converges queued
after it wait for it, except while a suspect's solo converge runs (its lease live): the
reconcile waits for that run, which may hang until its timeout, so they run beside it as
they would without the reconcile; once none runs they wait for it again, and it runs as
soon as no job of the host runs. It leaves the suspects (:func:`suspects`) alone, neither
converging them nor removing them as orphans, so a suspect's solo converge and a reconcile
do not wait for each other while queued: a reconcile does not wait for a solo converge in
its backoff, and a solo converge whose backoff ended does not wait for a queued reconcile.
Other jobs sharing a ``lock_key`` run one at a time in id order. Claims are serialised
(SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction advisory lock), so those rules
hold across processes; so are a host's enqueues on PostgreSQL (an advisory lock per
host), so two API processes never queue two converges of one host where one belongs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import peewee

from .db import CLAIM_LOCK, ENQUEUE_LOCK, advisory_lock, is_postgres, lock_row, write_transaction
from .models import AuditEntry, Deployment, Job, JobEvent, JobTarget, database_proxy, utcnow
from .vocabulary import AuditStatus

_OPEN = ("queued", "running")  # a target (or job) without an outcome yet

# What a deployment is told of a failure in a job it shares with others of its host: the
# failure's own text may be about another tenant's deployment (its id, its podman error).
SHARED_FAILURE = "a step of this run, shared with other deployments of the host, failed"


def host_lock_key(host: str) -> str:
    return f"{host}/"


def _lock_host(host: str) -> None:
    """Serialise the host's enqueues (PostgreSQL; SQLite's write transactions are serialised already)."""
    advisory_lock(ENQUEUE_LOCK, host)


def _solo_of(deployment_id: Any) -> peewee.Expression:
    """Solo converges that still have to act on the deployment."""
    mine: peewee.Expression = (Job.action == "converge") & Job.solo & (JobTarget.deployment == deployment_id) & (
        JobTarget.state.in_(_OPEN))
    return mine


def _alone(deployment_id: Any) -> bool:
    """A solo converge of the deployment is queued or running: its changes run alone too."""
    return bool(Job.select().join(JobTarget, on=(JobTarget.job == Job.id)).where(
        _solo_of(deployment_id) & Job.state.in_(_OPEN)).exists())


def _queued_converge(host: str, solo_of: Any | None) -> Job | None:
    """The host's latest queued converge: an ordinary one, or (``solo_of``) that deployment's solo one."""
    query = Job.select().where((Job.action == "converge") & (Job.host == host) & (Job.state == "queued"))
    if solo_of is None:
        query = query.where(~Job.solo)
    else:
        query = query.join(JobTarget, on=(JobTarget.job == Job.id)).where(_solo_of(solo_of))
    found: Job | None = query.order_by(Job.id.desc()).first()
    return found


# A host's queued converge waits this long after its latest change (never more than MAX_SETTLE_S
# after its first): changes that come in a burst (a team's deploys, a billing pass, a health
# cycle) join one run instead of one run each, at the cost of a one-off change's SETTLE_S.
SETTLE_S = 0.04
MAX_SETTLE_S = 0.5


def _new_converge(host: str, *, timeout_s: int, run_after: dt.datetime, solo: bool) -> Job:
    now = utcnow()
    job: Job = Job.create(deployment=None, action="converge", host=host, lock_key=host_lock_key(host),
                          timeout_s=timeout_s, run_after=run_after, solo=solo, created_at=now, updated_at=now)
    return job


def _add_target(job: Job, deployment_id: Any, generation: int) -> None:
    """The deployment is an open target of ``job``, to reach at least ``generation``.

    A target that has its outcome already (an earlier attempt of a retried job converged or
    failed it) is opened again: the change is new work, which the job's next run does.
    """
    target = JobTarget.get_or_none(_target(job, deployment_id))
    if target is None:
        JobTarget.create(job=job.id, deployment=deployment_id, generation=generation, state="queued")
        if JobTarget.select().where(JobTarget.job == job.id).count() == 2:
            _withhold_texts(job)  # shared from now on, what its runs recorded alone too
    elif target.state not in _OPEN:
        JobTarget.update(state="queued", generation=max(target.generation, generation), last_error=None,
                         failed_task=None).where(_target(job, deployment_id)).execute()
    elif target.generation < generation:
        set_target_generation(job, deployment_id, generation)


def shared(job: Job) -> bool:
    """The job has (had) more than one target: what its runs record for every target to read may
    be another tenant's (targets are never removed from a job)."""
    return JobTarget.select().where(JobTarget.job == job.id).count() > 1


def _withhold_texts(job: Job) -> None:
    """A job that becomes shared: the failure texts of the events its runs recorded for its one
    deployment are withheld (the job view shows every target all of the job's events)."""
    JobEvent.update(message=SHARED_FAILURE).where(
        (JobEvent.job == job.id) & JobEvent.status.in_(("failed", "ignored")) & JobEvent.message.is_null(False)
        & (JobEvent.message != "")).execute()


def enqueue_converge(deployment: Deployment, *, timeout_s: int) -> Job:
    """Make sure the deployment's host has a queued converge with the deployment as a target at
    its current generation; the job (a new one, or the queued one the change joined).

    A deployment running alone (a solo converge of it is queued or running) joins its queued
    solo converge, or queues the next one; any other joins the host's queued ordinary converge.

    Call inside the transaction that changed the desired state.
    """
    _lock_host(deployment.host)
    now = utcnow()
    alone = _alone(deployment.id)
    job = _queued_converge(deployment.host, deployment.id if alone else None)
    settle = dt.timedelta(seconds=SETTLE_S)
    if job is None:
        job = _new_converge(deployment.host, timeout_s=timeout_s, run_after=now + settle, solo=alone)
    else:  # joins it, and a change is worth trying now (a retry's backoff ends), once the burst settled
        run_after = max(now, min(now + settle, job.created_at + dt.timedelta(seconds=MAX_SETTLE_S)))
        Job.update(run_after=run_after, timeout_s=max(job.timeout_s, timeout_s), updated_at=now).where(
            Job.id == job.id).execute()
    _add_target(job, deployment.id, deployment.generation)
    return Job.get_by_id(job.id)


def retry_alone(job: Job, deployment_id: Any, generation: int, *, run_after: dt.datetime, error: str,
                task: str | None) -> Job:
    """A target of a shared job whose run timed out goes on alone; its solo converge.

    Its target in ``job`` ends failed with the run's error (the run is over); it is queued
    with that error in its solo converge: the one already queued (it joins it), or a new
    one that runs after ``run_after``. The deployment's open audit entries that name ``job``
    name the solo converge from then on, and so do its changes queued in the host's ordinary
    converges (:func:`_take_alone`). Call after :func:`finish` of ``job``, in its transaction.
    """
    # The deployment's row before the enqueue lock (db.py's lock order): its target's foreign
    # key would take a share lock on it while we hold the enqueue lock.
    lock_row(Deployment, deployment_id)
    _lock_host(job.host)
    finish_target(job, deployment_id, succeeded=False, error=error, task=task)
    solo = _queued_converge(job.host, deployment_id) or _new_converge(
        job.host, timeout_s=job.timeout_s, run_after=run_after, solo=True)
    _add_target(solo, deployment_id, generation)
    set_target_error(solo, deployment_id, error, task)
    _relink_entries(deployment_id, job.id, solo.id)
    _take_alone(solo, deployment_id)
    return solo


def _take_alone(solo: Job, deployment_id: Any) -> None:
    """The deployment goes on alone in ``solo``: its open targets in the host's queued ordinary
    converges (its changes queued while the run that timed out ran) move there, the higher
    generation winning, with the open audit entries that name them. Left there, they would
    hold that converge (and every change of the host that joins it) behind the solo one, or run
    the suspect again in a shared run. A converge left with nothing to do is settled (:func:`_settle`).
    """
    moved = list(JobTarget.select(JobTarget.job, JobTarget.generation).join(Job, on=(JobTarget.job == Job.id)).where(
        (Job.action == "converge") & (Job.host == solo.host) & (Job.state == "queued") & ~Job.solo
        & (Job.id != solo.id) & (JobTarget.deployment == deployment_id) & JobTarget.state.in_(_OPEN)
    ).order_by(JobTarget.job))
    for target in moved:
        left: Job = Job.get_by_id(target.job_id)
        JobTarget.delete().where(_target(left, deployment_id)).execute()
        _add_target(solo, deployment_id, target.generation)
        _relink_entries(deployment_id, left.id, solo.id)
        _settle(left)


def _settle(job: Job) -> None:
    """A queued converge a target left: gone when it has no target left and never ran (nothing
    names it: as if the change had joined the solo converge); finished as its next run would
    finish it (engine.start_converge) when it ran before and has no open target left."""
    if JobTarget.select().where((JobTarget.job == job.id) & JobTarget.state.in_(_OPEN)).exists():
        return
    if job.attempts == 0 and not JobTarget.select().where(JobTarget.job == job.id).exists():
        Job.delete().where((Job.id == job.id) & (Job.state == "queued")).execute()
        return
    now = utcnow()
    Job.update(state="succeeded" if all_succeeded(job) else "failed", finished_at=now, updated_at=now,
               lease_owner=None, last_error=None).where((Job.id == job.id) & (Job.state == "queued")).execute()


def _relink_entries(deployment_id: Any, from_job: int, to_job: int) -> None:
    """The deployment's open audit entries that ``from_job`` was to converge go on in ``to_job``: they name it."""
    AuditEntry.update(job_id=to_job, updated_at=utcnow()).where(
        (AuditEntry.deployment == deployment_id) & (AuditEntry.job_id == from_job)
        & AuditEntry.status.in_((AuditStatus.PENDING, AuditStatus.RUNNING))).execute()


def _target(job: Job, deployment_id: Any) -> peewee.Expression:
    mine: peewee.Expression = (JobTarget.job == job.id) & (JobTarget.deployment == deployment_id)
    return mine


def targets(job: Job, *, open_only: bool = False) -> list[JobTarget]:
    """The deployments a converge covers (``open_only``: those without an outcome yet)."""
    query = JobTarget.select().join(Deployment).where(JobTarget.job == job.id)
    if open_only:
        query = query.where(JobTarget.state.in_(_OPEN))
    return list(query.order_by(Deployment.inserted_at, Deployment.id))  # in the order they were created


def finish_target(job: Job, deployment_id: Any, *, succeeded: bool, error: str | None = None,
                  task: str | None = None) -> None:
    """A target's own outcome (call inside the transaction that records it)."""
    JobTarget.update(state="succeeded" if succeeded else "failed", last_error=error, failed_task=task).where(
        _target(job, deployment_id)).execute()


def set_target_generation(job: Job, deployment_id: Any, generation: int) -> None:
    """The generation a run converges the target to (the deployment's current one)."""
    JobTarget.update(generation=generation).where(_target(job, deployment_id)).execute()


def set_target_error(job: Job, deployment_id: Any, error: str, task: str | None) -> None:
    """Why the target is tried again (it stays open)."""
    JobTarget.update(last_error=error, failed_task=task).where(_target(job, deployment_id)).execute()


def all_succeeded(job: Job) -> bool:
    return not JobTarget.select().where((JobTarget.job == job.id) & (JobTarget.state != "succeeded")).exists()


def owns(job: Job, owner: str) -> bool:
    """``owner`` still holds the job's lease (PostgreSQL: the row stays locked until the transaction ends)."""
    query = Job.select(Job.id).where(_owned(job, owner))
    if is_postgres(database_proxy.obj):
        query = query.for_update()
    return query.exists()


def open_converge(deployment: Deployment) -> Job | None:
    """The queued or running converge that still has to act on the deployment, if any."""
    found: Job | None = Job.select().join(JobTarget, on=(JobTarget.job == Job.id)).where(
        (JobTarget.deployment == deployment.id) & JobTarget.state.in_(_OPEN)
        & (Job.action == "converge") & Job.state.in_(_OPEN)).first()
    return found


def suspects(host: str) -> list[str]:
    """Deployments of the host a solo converge still has to act on (a run of theirs timed out):
    a reconcile leaves them alone."""
    rows = JobTarget.select(JobTarget.deployment).join(Job, on=(JobTarget.job == Job.id)).where(
        (Job.action == "converge") & Job.solo & (Job.host == host) & Job.state.in_(_OPEN)
        & JobTarget.state.in_(_OPEN)).distinct()
    return sorted({str(t.deployment_id) for t in rows})


def enqueue_reconcile(host: str, *, timeout_s: int, reserved_for: str | None = None,
                      lease_s: int = 0) -> Job | None:
    """Queue a host-wide reconcile; None when one is already queued, or (the periodic one) while a
    suspect's solo converge runs on the host: a reconcile queued then would wait for that run,
    which may hang until its timeout (the converges queued after it run beside that run, but wait
    for the reconcile again once it ended).

    A reserved job (``buddo-deploy reconcile``) is claimed by its reserver only; while
    it waits its turn the reserver keeps a lease on it (:func:`hold`), so converges
    queued after it wait for it, and a reserver that died blocks nobody.
    """
    now = utcnow()
    if reserved_for is None and Job.select().where(
        (Job.action == "reconcile") & (Job.host == host) & (Job.state == "queued") & Job.reserved_for.is_null()
    ).exists():
        return None
    if reserved_for is None and Job.select().where(
        (Job.action == "converge") & (Job.host == host) & (Job.state == "running") & Job.solo
    ).exists():
        return None
    return Job.create(
        deployment=None, action="reconcile", host=host, lock_key=host_lock_key(host) if reserved_for is None else
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


# A job is claimable when it is due and: a reconcile (or an output read) has no earlier job of
# its lock_key queued or running (a queued solo converge aside: the reconcile leaves its
# deployment alone); a converge has no earlier queued or running job, and no running one
# (a change may join a retried converge older than a run of its deployment), with a target
# of its deployments or subdomains; a reconcile and another job of the host never run together; a
# converge that is not solo has no earlier queued reconcile of its host to wait for, unless a
# solo converge of the host runs (its lease live): the reconcile waits for that run, which may
# hang until its timeout, so the converge runs beside it as it would without the reconcile.
_CLAIMABLE = """
SELECT j.id FROM jobs j
WHERE {due}
  AND {only}
  AND (j.action = 'converge' OR NOT EXISTS (
      SELECT 1 FROM jobs e
      WHERE e.lock_key = j.lock_key AND e.id < j.id
        AND (e.state = 'running' OR (e.state = 'queued' AND NOT e.solo))))
  AND (j.action <> 'converge' OR NOT EXISTS (
      SELECT 1 FROM job_targets mine
      JOIN deployments md ON md.id = mine.deployment_id
      JOIN deployments td ON td.subdomain = md.subdomain
      JOIN job_targets theirs ON theirs.deployment_id = td.id AND theirs.job_id <> mine.job_id
      JOIN jobs e ON e.id = theirs.job_id
      WHERE mine.job_id = j.id AND ((e.id < j.id AND e.state IN ('queued', 'running'))
                                    OR (e.state = 'running' AND e.lease_expires_at >= {p}))))
  AND NOT EXISTS (
      SELECT 1 FROM jobs r
      WHERE r.host = j.host AND r.id <> j.id AND r.state = 'running' AND r.lease_expires_at >= {p}
        AND (r.action = 'reconcile' OR j.action = 'reconcile'))
  AND (j.action = 'reconcile' OR j.solo OR NOT EXISTS (
      SELECT 1 FROM jobs q
      WHERE q.host = j.host AND q.action = 'reconcile' AND q.state = 'queued' AND q.id < j.id
        AND q.run_after <= {p} AND (q.reserved_for IS NULL OR q.lease_expires_at >= {p}))
    OR EXISTS (
      SELECT 1 FROM jobs s
      WHERE s.host = j.host AND s.action = 'converge' AND s.solo AND s.state = 'running'
        AND s.lease_expires_at >= {p}))
ORDER BY j.id
LIMIT 1
"""
# Due: queued and its time has come, or running on a lease that lapsed (its worker died).
# Each is its own seek in id order (jobs_open), which stops at the first claimable job;
# the two together, an OR, would gather every due job and sort them first. The subqueries
# seek too: a job's host (jobs_host_state), its targets' deployments and their jobs by
# subdomain (deployments_subdomain, job_targets_deployment). So a claim costs the same
# with 10 or 10,000 queued, and with a year of history (migration 0028).
_DUE = ("j.state = 'queued' AND j.run_after <= {p}",
        "j.state = 'running' AND j.lease_expires_at < {p} AND j.reserved_for IS NULL")
_CLAIM = ("SELECT id FROM ({queued}) due_queued UNION ALL SELECT id FROM ({lapsed}) due_lapsed "
          "ORDER BY id LIMIT 1")


def claim(owner: str, lease_s: int, *, job_id: int | None = None) -> Job | None:
    """Claim the next runnable job for ``owner`` (or the reserved job ``job_id``); None when there is none."""
    db = database_proxy.obj
    now = utcnow()
    only_params: tuple[object, ...] = ()
    if job_id is None:
        only = "j.reserved_for IS NULL"
    else:
        only, only_params = f"j.id = {db.param} AND j.reserved_for = {db.param}", (job_id, owner)
    queued, lapsed = (_CLAIMABLE.format(p=db.param, only=only, due=due.format(p=db.param)) for due in _DUE)
    query = _CLAIM.format(queued=queued, lapsed=lapsed)
    params = (now, *only_params, now, now, now, now, now) * 2
    # Looked for first without the write lock: an idle worker's poll never holds up an API write.
    with db.atomic():
        if db.execute_sql(query, params).fetchone() is None:
            return None
    with write_transaction(db):
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))
        found = db.execute_sql(query, params).fetchone()
        if found is None:
            return None
        Job.update(
            state="running",
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            updated_at=now,
            started_at=now,
        ).where(Job.id == found[0]).execute()
        JobTarget.update(state="running").where((JobTarget.job == found[0]) & (JobTarget.state == "queued")).execute()
        claimed: Job = Job.get_by_id(found[0])
        return claimed


def _owned(job: Job, owner: str) -> peewee.Expression:
    return (Job.id == job.id) & (Job.lease_owner == owner) & (Job.state == "running")


def renew(job: Job, owner: str, lease_s: int) -> bool:
    """Extend a run's lease; False means another worker has taken the job over."""
    now = utcnow()
    with write_transaction(database_proxy.obj):
        updated = Job.update(lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now).where(
            _owned(job, owner)).execute()
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


def retry_later(job: Job, owner: str, *, delay: dt.timedelta, error: str, solo: bool = False) -> bool:
    """Put the job back in the queue after ``delay`` (``solo``: as a solo converge, which new
    changes of the host no longer join, and which takes its deployment's changes queued in the
    host's ordinary converges, as :func:`retry_alone` does); False when the lease was lost."""
    now = utcnow()
    values: dict[str, Any] = {"state": "queued", "run_after": now + delay, "lease_owner": None,
                              "lease_expires_at": None, "updated_at": now, "last_error": error}
    if solo:
        values["solo"] = True
    updated = Job.update(**values).where(_owned(job, owner)).execute()
    if updated:
        JobTarget.update(state="queued").where((JobTarget.job == job.id) & (JobTarget.state == "running")).execute()
        if solo:
            _lock_host(job.host)
            retried: Job = Job.get_by_id(job.id)
            for target in targets(retried, open_only=True):
                _take_alone(retried, target.deployment_id)
    return bool(updated)
