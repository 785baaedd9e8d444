"""Per-job log: a summary line per ansible-runner event (the raw events are never kept)."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    return [
        f"""CREATE TABLE job_events (
            id {serial},
            job_id BIGINT NOT NULL REFERENCES jobs (id),
            attempt INTEGER NOT NULL,
            created_at TIMESTAMP NOT NULL,
            event VARCHAR(64) NOT NULL,
            host VARCHAR(255),
            task VARCHAR(512),
            status VARCHAR(16),
            message TEXT
        )""",
        "CREATE INDEX job_events_job ON job_events (job_id, id)",
    ]
