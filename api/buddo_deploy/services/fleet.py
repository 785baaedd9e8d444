"""What the database says about the fleet at this moment: the job queue and deployments by status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import peewee

from ..models import Deployment, Job, utcnow


@dataclass(frozen=True)
class QueueRow:
    action: str
    state: str  # queued | running
    count: int
    oldest_age_s: float


def job_queue() -> list[QueueRow]:
    """Unfinished jobs by action and state, with the age of the oldest (since it was queued)."""
    now = utcnow()
    # .tuples() rows; the stubs type a select's rows as models.
    rows = cast(Iterable[tuple[Any, ...]], (
        Job.select(Job.action, Job.state, peewee.fn.COUNT(Job.id).alias("n"),
                   peewee.fn.MIN(Job.created_at).alias("oldest"))
        .where(Job.state.in_(("queued", "running")))
        .group_by(Job.action, Job.state)
        .tuples()
    ))
    out = []
    for action, state, count, oldest in rows:
        # SQLite hands an aggregate back as text; the field parses it like a column value.
        created: dt.datetime = Job.created_at.python_value(oldest)
        out.append(QueueRow(action, state, int(count), max(0.0, (now - created).total_seconds())))
    return out


def deployments_by_status() -> list[tuple[str, str, int]]:
    """(status, health_status, count) of every deployment row, destroyed ones included."""
    query = cast(Iterable[tuple[Any, ...]], (
        Deployment.select(Deployment.status, Deployment.health_status, peewee.fn.COUNT(Deployment.id))
        .group_by(Deployment.status, Deployment.health_status)
        .tuples()
    ))
    return [(status, health, int(count)) for status, health, count in query]
