"""``output_lines.subject_id``: a line is a followed deployment's or a one-off run's (GET
.../runs/{run_id}?follow=true streams a run's lines as it prints them); the column was
``deployment_id``. Ids are UUIDs, so one column names either without a clash."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "DROP INDEX output_lines_deployment",
        "ALTER TABLE output_lines RENAME COLUMN deployment_id TO subject_id",
        "CREATE INDEX output_lines_subject ON output_lines (subject_id, id)",
    ]
