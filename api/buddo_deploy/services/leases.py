"""Named leases (table leases): one worker at a time does a periodic duty (billing, retention)."""

from __future__ import annotations

import datetime as dt

from ..db import write_transaction
from ..models import Lease, database_proxy


def take(name: str, owner: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
    """Hold (or renew) lease ``name`` for ``owner`` until ``now + ttl``; False when another holds it."""
    with write_transaction(database_proxy.obj):
        taken = Lease.update(owner=owner, expires_at=now + ttl).where(
            (Lease.name == name) & ((Lease.owner == owner) | Lease.owner.is_null() | (Lease.expires_at < now))
        ).execute()
    return bool(taken == 1)


def release(name: str, owner: str) -> None:
    with write_transaction(database_proxy.obj):
        Lease.update(owner=None, expires_at=None).where((Lease.name == name) & (Lease.owner == owner)).execute()
