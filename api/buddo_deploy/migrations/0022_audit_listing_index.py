"""The deploy log pages by (inserted_at, id) within a deployment: its index has the id too, so a
row-value cursor seeks to the page (the old index stopped at inserted_at)."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        "CREATE INDEX audit_entries_deployment_listing ON audit_entries (deployment_id, inserted_at, id)",
        "DROP INDEX audit_entries_deployment",
    ]
