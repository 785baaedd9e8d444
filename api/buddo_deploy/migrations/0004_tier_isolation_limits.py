"""Per-tier pids limit and log size cap of a deployment's container.

Read from the tier when the desired-state document is built (not copied onto the
deployment), so a changed tier reaches running containers: the converge plan sees
the difference and replaces them. Existing rows get the defaults of the smallest
tier; the tier sync at startup sets each tier's own values from tiers.json.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "ALTER TABLE tiers ADD COLUMN pids_limit INTEGER NOT NULL DEFAULT 128",
        "ALTER TABLE tiers ADD COLUMN log_max_size_mb INTEGER NOT NULL DEFAULT 10",
    ]
