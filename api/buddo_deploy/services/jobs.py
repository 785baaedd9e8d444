"""A deployment's jobs as the deploy log shows them: the run, and the playbook events it recorded.

A host's converge is shared by the deployments it converges (its targets): a deployment's
view of it is its own target (state, generation, error, failed task) with the job's
events, a shared job's failure texts withheld already when they were recorded
(engine.shared_event), or when its second target joined (jobqueue): each deployment's own
failure is its target's.
Events are the summaries the worker recorded (task, host, status, and for a failed
task its message); the raw ansible-runner events, which may hold module arguments,
are never stored (runner.py), so nothing here can show a secret.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain_errors import Invalid, NotFound
from ..models import AuditEntry, Deployment, Job, JobEvent, JobTarget

# A job id is a 64-bit integer; anything longer cannot name one.
_MAX_ID_DIGITS = 18


def _digits(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and len(raw) <= _MAX_ID_DIGITS


@dataclass(frozen=True)
class JobLog:
    job: Job
    events: list[JobEvent]
    next_cursor: str | None
    failed_task: str | None
    # The deployment's part of a host converge (None: a job of the deployment's own).
    target: JobTarget | None = None

    @property
    def state(self) -> str:
        return str(self.target.state if self.target is not None else self.job.state)

    @property
    def generation(self) -> int:
        return int(self.target.generation if self.target is not None else self.job.generation)

    @property
    def last_error(self) -> str | None:
        return self.target.last_error if self.target is not None else self.job.last_error


def _cursor(raw: str | None) -> int:
    if raw is None:
        return 0
    if not _digits(raw):
        raise Invalid.for_field("cursor", "is not a cursor this API returned", "invalid_cursor")
    return int(raw)


def job_log(deployment: Deployment, raw_job_id: str, *, limit: int, cursor: str | None,
            retention_days: int = 0) -> JobLog:
    """One job of ``deployment`` with a page of its events; 404 for any other job id.

    A job an audit entry of the deployment names that is gone was pruned (services/retention.py):
    the 404 says so.
    """
    job = target = None
    if _digits(raw_job_id):
        target = JobTarget.get_or_none((JobTarget.job == int(raw_job_id)) & (JobTarget.deployment == deployment.id))
        # A host converge the deployment is a target of, or a job of the deployment's own.
        mine = (Job.id == int(raw_job_id)) if target is not None else (Job.deployment == deployment.id)
        job = Job.get_or_none((Job.id == int(raw_job_id)) & mine)
    if job is None:
        if _digits(raw_job_id) and AuditEntry.select().where(
                (AuditEntry.deployment == deployment.id) & (AuditEntry.job_id == int(raw_job_id))).exists():
            kept = f"after {retention_days} days" if retention_days > 0 else "by an earlier retention setting"
            raise NotFound(f"Job {int(raw_job_id)} was pruned {kept} (BUDDO_RETENTION_DAYS); its audit entry is kept",
                           code="job_not_found",
                           details={"job_id": int(raw_job_id), "pruned": True, "retention_days": retention_days})
        raise NotFound("Job not found for this deployment", code="job_not_found")
    rows = list(
        JobEvent.select()
        .where((JobEvent.job == job.id) & (JobEvent.id > _cursor(cursor)))
        .order_by(JobEvent.id)
        .limit(limit + 1)
    )
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    if target is not None:
        # Its own failure's task; for a failure of the run's (not the deployment's), the run's.
        failed_task = (target.failed_task or _failed_task(job)) if target.last_error else None
        return JobLog(job, rows[:limit], next_cursor, failed_task, target)
    return JobLog(job, rows[:limit], next_cursor, _failed_task(job))


def _failed_task(job: Job) -> str | None:
    """The task the latest attempt failed at, if it failed (a failed event of the run's)."""
    if job.last_error is None:
        return None
    failed = list(
        JobEvent.select(JobEvent.task, JobEvent.status)
        .where((JobEvent.job == job.id) & (JobEvent.attempt == job.attempts)
               & JobEvent.status.in_(("failed", "unreachable", "ignored")) & JobEvent.task.is_null(False))
        .order_by(JobEvent.id)
    )
    first = next((e for e in failed if e.status != "ignored"), failed[0] if failed else None)
    return first.task if first else None
