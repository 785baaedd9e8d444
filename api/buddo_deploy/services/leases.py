"""Named leases (table leases): one worker at a time does a periodic duty (billing, retention, a
host's health probe)."""

from __future__ import annotations

import datetime as dt

from ..db import write_transaction
from ..models import Lease, database_proxy


def take(name: str, owner: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
    """Hold (or renew) lease ``name`` for ``owner`` until ``now + ttl``; False when another holds it.
    A lease named for the first time (a host's health probe) is made then."""
    with write_transaction(database_proxy.obj):
        mine = (Lease.name == name) & ((Lease.owner == owner) | Lease.owner.is_null() | (Lease.expires_at < now))
        taken = Lease.update(owner=owner, expires_at=now + ttl).where(mine).execute()
        if not taken and Lease.insert(name=name).on_conflict_ignore().execute():
            taken = Lease.update(owner=owner, expires_at=now + ttl).where(mine).execute()
    return bool(taken == 1)


def release(name: str, owner: str) -> None:
    with write_transaction(database_proxy.obj):
        Lease.update(owner=None, expires_at=None).where((Lease.name == name) & (Lease.owner == owner)).execute()
