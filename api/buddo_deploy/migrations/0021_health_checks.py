"""An operator's health check per deployment (``health_check``, JSON: path, expected_status,
interval_s, timeout_s, grace_s), kept by each release too (a rollback restores it). NULL: the
platform's defaults, today's behaviour (any answer on / within 60 s gates a new container;
the prober counts any status below 500 on / as healthy).
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "ALTER TABLE deployments ADD COLUMN health_check TEXT",
        "ALTER TABLE releases ADD COLUMN health_check TEXT",
    ]
