"""When a job's latest attempt was claimed, so its log can show how long that attempt ran."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return ["ALTER TABLE jobs ADD COLUMN started_at TIMESTAMP"]
