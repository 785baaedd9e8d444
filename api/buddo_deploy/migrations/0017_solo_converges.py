"""A converge that runs one deployment alone (``solo``): a deployment whose run timed out.

New changes of the host never join such a job; only the deployment's own do. Existing
jobs are ordinary converges (a timed-out run queued before the upgrade retries as before,
and goes solo when it times out again).
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return ["ALTER TABLE jobs ADD COLUMN solo BOOLEAN NOT NULL DEFAULT FALSE"]
