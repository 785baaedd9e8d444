"""Releases: what each successful deploy, restart or rollback ran, numbered per deployment.

A rollback pins the deployment to a release's image digest (``pinned_digest``):
the container then runs ``<repository>@<digest>`` from the host's copy, never the tag.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    return [
        f"""CREATE TABLE releases (
            id {serial},
            deployment_id VARCHAR(36) NOT NULL REFERENCES deployments (id),
            number INTEGER NOT NULL,
            image VARCHAR(512) NOT NULL,
            image_digest VARCHAR(128) NOT NULL,
            pinned BOOLEAN NOT NULL DEFAULT FALSE,
            rollback_of INTEGER,
            initiated_by VARCHAR(255),
            generation INTEGER NOT NULL,
            created_at TIMESTAMP NOT NULL
        )""",
        "CREATE UNIQUE INDEX releases_deployment_number ON releases (deployment_id, number)",
        "ALTER TABLE deployments ADD COLUMN pinned_digest VARCHAR(128)",
    ]
