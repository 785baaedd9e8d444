"""The deploy log's job view: a job's run and the playbook events it recorded."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field, StrictStr

from .common import JobStateField, Timestamp


class JobQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/jobs/{job_id} (unknown parameters are ignored)."""

    limit: int = Field(200, ge=1, le=1000, description="Events per page")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=64, description="next_cursor of the previous page")


class JobEventOut(BaseModel):
    id: int
    attempt: int
    created_at: Timestamp
    event: str = Field(description="ansible-runner event, e.g. runner_on_failed")
    task: str | None
    host: str | None
    status: Literal["ok", "changed", "failed", "unreachable", "ignored"] | None
    message: str | None = Field(description="A failed task's message, the play's name or the recap")


class JobOut(BaseModel):
    id: int
    deployment_id: uuid.UUID
    action: str = Field(description="converge: bring the deployment to `generation`")
    state: JobStateField
    generation: int
    attempts: int
    created_at: Timestamp
    started_at: Timestamp | None = Field(description="When the latest attempt began")
    finished_at: Timestamp | None
    duration_s: float | None = Field(description="Of the latest attempt, once finished")
    run_after: Timestamp | None = Field(description="Queued: when the next attempt may begin (backoff)")
    last_error: str | None
    failed_task: str | None = Field(description="The first task of the latest attempt that failed")
    events: list[JobEventOut] = Field(description="Oldest first, one page")
    next_cursor: str | None


class JobEnvelope(BaseModel):
    job: JobOut
