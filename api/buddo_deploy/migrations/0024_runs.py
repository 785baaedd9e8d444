"""``runs``: one-off commands of a deployment (POST /api/deploy/apps/{id}/runs): what to run
(the command is stored encrypted: it may hold a secret), how it ended, and what it printed
(masked)."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        """CREATE TABLE runs (
            id VARCHAR(36) PRIMARY KEY,
            deployment_id VARCHAR(36) NOT NULL REFERENCES deployments (id),
            command_encrypted TEXT NOT NULL,
            timeout_s INTEGER NOT NULL,
            state VARCHAR(16) NOT NULL,
            exit_code INTEGER,
            output TEXT,
            error TEXT,
            initiated_by VARCHAR(255),
            job_id BIGINT,
            inserted_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP
        )""",
        "CREATE INDEX runs_listing ON runs (deployment_id, inserted_at, id)",
        "CREATE INDEX runs_state ON runs (state)",
    ]
