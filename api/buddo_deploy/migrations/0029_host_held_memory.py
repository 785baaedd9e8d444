"""``deployments_host_held`` covers the memory a host holds: placement (and a tier change's
room check) sums it from the index alone, reading no table row (an index-only scan)."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "DROP INDEX deployments_host_held",
        "CREATE INDEX deployments_host_held ON deployments (host, released_at, memory_limit_mb)",
    ]
