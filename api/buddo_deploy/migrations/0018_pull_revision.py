"""``pull_revision`` replaces ``pull_image``: the revision whose start pulls its image's tag as it
is now (a restart asks for it). Desired state only: the worker no longer clears a flag once the
pull converged; a converge pulls while that revision is not yet observed
(state.desired_item), and a later change's revision (a heal, a rollback) does not.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "ALTER TABLE deployments ADD COLUMN pull_revision INTEGER NOT NULL DEFAULT 0",
        "UPDATE deployments SET pull_revision = revision WHERE pull_image",
        "ALTER TABLE deployments DROP COLUMN pull_image",
    ]
