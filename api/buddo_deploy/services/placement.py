"""What a container host holds, and the locks its room is taken under.

A host's memory is held by its deployments (stopped ones too: they may start again; until
their teardown converged) and by the one-off runs queued or running beside them, each with
its deployment's memory. Room is counted and taken as one step under the host's lock
(PostgreSQL; SQLite runs one write transaction at a time).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import peewee

from ..db import is_postgres
from ..models import Deployment, Run, database_proxy
from ..vocabulary import RunState

# pg_advisory_xact_lock(kind, hashtext(name)): an operator's limits are counted and taken as
# one step under its own lock; a host's room and ports under the host's. The lock order: the
# operator's, its billing account's row, rows of its deployments, a host's lock, then the host's
# enqueue lock (jobqueue) and its queued converge's row. Whoever holds the enqueue lock takes no
# lock before it in this order (jobqueue.retry_alone locks its deployment's row first).
OPERATOR_LOCK = 74_217_003
HOST_LOCK = 74_217_006  # 004 is output.py's read lock, 005 jobqueue's enqueue lock


def advisory_lock(kind: int, name: str, *, wait: bool) -> bool:
    """A PostgreSQL transaction-scoped advisory lock (a no-op on SQLite, whose writers run one at a
    time); without ``wait``, False when another transaction holds it."""
    db = database_proxy.obj
    if not is_postgres(db):
        return True
    if wait:
        db.execute_sql("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (kind, name))
        return True
    return bool(db.execute_sql("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (kind, name)).fetchone()[0])


def held(names: list[str], *, besides: Any = None) -> dict[str, tuple[int, int]]:
    """Per host: the memory held (deployments and active runs) and how many deployments; one
    covering-index read for the deployments, one for the few active runs. ``besides``: a
    deployment left out (a tier change counts the rest)."""
    mine = Deployment.host.in_(names) & Deployment.released_at.is_null()
    if besides is not None:
        mine &= Deployment.id != besides
    rows = cast(Iterable[tuple[Any, ...]], (  # .tuples() rows; the stubs type a select's rows as models
        Deployment.select(Deployment.host, peewee.fn.SUM(Deployment.memory_limit_mb),
                          peewee.fn.COUNT(peewee.SQL("*"))).where(mine).group_by(Deployment.host).tuples()))
    found = {host: (int(memory or 0), int(count)) for host, memory, count in rows}
    runs = cast(Iterable[tuple[Any, ...]], (
        Run.select(Deployment.host, peewee.fn.SUM(Deployment.memory_limit_mb))
        .join(Deployment, on=(Run.deployment == Deployment.id))
        .where(Run.state.in_([RunState.QUEUED, RunState.RUNNING]) & Deployment.host.in_(names))
        .group_by(Deployment.host).tuples()))
    for host, memory in runs:
        used, count = found.get(host, (0, 0))
        found[host] = (used + int(memory or 0), count)
    return found


def free_mb(host_memory_mb: int, name: str, *, besides: Any = None) -> int:
    """The memory ``name`` has left (call under its lock to take some)."""
    return host_memory_mb - held([name], besides=besides).get(name, (0, 0))[0]
