"""``output_follows`` and ``output_lines``: app output followed live (GET .../output?follow=true).

A follow is a deployment's request for its output as it is printed, kept alive by its
followers (``until``) and collected by one worker at a time (``owner``, ``lease_until``);
the collector appends each line, env values masked, to ``output_lines``, which followers
read by id.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    return [
        """CREATE TABLE output_follows (
            deployment_id VARCHAR(36) PRIMARY KEY REFERENCES deployments (id),
            until TIMESTAMP NOT NULL,
            owner VARCHAR(255),
            lease_until TIMESTAMP
        )""",
        f"""CREATE TABLE output_lines (
            id {serial},
            deployment_id VARCHAR(36) NOT NULL,
            at VARCHAR(64) NOT NULL,
            stream VARCHAR(8) NOT NULL,
            text TEXT NOT NULL,
            container VARCHAR(255) NOT NULL,
            created_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX output_lines_deployment ON output_lines (deployment_id, id)",
        "CREATE INDEX output_lines_created ON output_lines (created_at)",
    ]
