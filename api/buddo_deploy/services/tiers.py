"""Tier catalogue: a data file in the repo, synced idempotently into the database."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from ..db import write_transaction
from ..models import Tier, database_proxy
from ..schemas import TIER_SLUG_PATTERN

_TIER_NAMESPACE = uuid.UUID("6f1c7d1e-2f0e-4c55-9d1a-7a1f0b7f3e10")
_FIELDS = (
    "name", "payment_method", "monthly_cost_points", "monthly_cost_sats", "memory_limit_mb",
    "cpu_limit_millicores", "custom_domain_allowed", "monthly_stipend_points",
    "ad_reach_multiplier", "max_deployments", "pids_limit", "log_max_size_mb",
    "disk_limit_mb",
)


def tier_id(slug: str) -> uuid.UUID:
    """Stable per slug, so every database and every sync agrees on a tier's id."""
    return uuid.uuid5(_TIER_NAMESPACE, slug)


def load_tier_file(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of tiers")
    for entry in data:
        missing = {"slug", *_FIELDS} - set(entry)
        if missing:
            raise ValueError(f"{path}: tier {entry.get('slug')!r} lacks {sorted(missing)}")
        if not isinstance(entry["slug"], str) or not re.fullmatch(TIER_SLUG_PATTERN, entry["slug"]):
            raise ValueError(f"{path}: tier slug {entry['slug']!r} is not lowercase letters, digits and hyphens")
        if entry["payment_method"] not in {"buddo_points", "bitcoin"}:
            raise ValueError(f"{path}: tier {entry['slug']!r} has an unknown payment_method")
    return data


def sync_tiers(path: Path) -> int:
    """Insert or update every tier in the file; return how many rows changed."""
    changed = 0
    with write_transaction(database_proxy.obj):
        for position, entry in enumerate(load_tier_file(path)):
            values = {name: entry[name] for name in _FIELDS} | {"position": position}
            current = Tier.get_or_none(Tier.slug == entry["slug"])
            if current is None:
                Tier.create(id=tier_id(entry["slug"]), slug=entry["slug"], **values)
                changed += 1
            elif any(getattr(current, name) != value for name, value in values.items()):
                Tier.update(**values).where(Tier.id == current.id).execute()
                changed += 1
    return changed


def list_tiers() -> list[Tier]:
    return list(Tier.select().order_by(Tier.position, Tier.slug))


def get_tier(slug: str) -> Tier | None:
    return Tier.get_or_none(Tier.slug == slug)
