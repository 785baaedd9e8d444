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

from ..models import Deployment, Run
from ..vocabulary import RunState


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
