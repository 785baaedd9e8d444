"""GET /api/deploy/apps/{id}/jobs/{job_id}: one job of the deploy log with its playbook events."""

from __future__ import annotations

import uuid

import falcon

from ..schemas import JobEnvelope, JobEventOut, JobOut, JobQuery
from ..services.jobs import JobLog, job_log
from ..services.lifecycle import Lifecycle
from .common import parse_query, send


def job_out(log: JobLog) -> JobOut:
    job = log.job
    duration_s = None
    if job.finished_at is not None and job.started_at is not None:
        duration_s = round((job.finished_at - job.started_at).total_seconds(), 1)
    return JobOut(
        id=job.id,
        deployment_id=log.target.deployment_id if log.target is not None else job.deployment_id,
        action=job.action,
        state=log.state,
        generation=log.generation,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        duration_s=duration_s,
        run_after=job.run_after if log.state == "queued" else None,
        last_error=log.last_error,
        failed_task=log.failed_task,
        events=[
            JobEventOut(id=e.id, attempt=e.attempt, created_at=e.created_at, event=e.event, task=e.task,
                        host=e.host, status=e.status, message=e.message)
            for e in log.events
        ],
        next_cursor=log.next_cursor,
    )


class JobsResource:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def on_get(self, req: falcon.Request, resp: falcon.Response, deployment_id: uuid.UUID, job_id: str) -> None:
        query = parse_query(req, JobQuery)
        deployment = self.lifecycle.get_owned(req.context.principal, deployment_id)
        log = job_log(deployment, job_id, limit=query.limit, cursor=query.cursor,
                      retention_days=self.lifecycle.settings.retention_days)
        send(resp, JobEnvelope(job=job_out(log)))
