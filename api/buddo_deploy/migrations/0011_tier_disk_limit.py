"""Per-tier disk limit of a deployment's container (its writable layer).

Read from the tier when the desired-state document is built, and part of the spec: a
changed limit replaces the containers. Existing rows get the smallest tier's value; the
tier sync at startup sets each tier's own from tiers.json.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return ["ALTER TABLE tiers ADD COLUMN disk_limit_mb INTEGER NOT NULL DEFAULT 1024"]
