"""Remembered answers are stored encrypted from now on (one may hold a webhook's signing secret,
shown once). Those stored before, in the clear, are dropped: a retry with one of their keys,
within 24 h of the upgrade, runs again as a new request."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return ["DELETE FROM idempotency_keys"]
