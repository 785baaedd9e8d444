"""``deployments_operator_live`` covers a create's limit counts (an operator's live deployments,
of a tier and in all): they read the index alone. With the operator-first listing index only,
the planner of a database whose statistics say one operator holds most deployments (SQLite
after ANALYZE) scanned the whole table for every create, another operator's too."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return ["CREATE INDEX deployments_operator_live ON deployments (operator_id, deploy_tier_id, status)"]
