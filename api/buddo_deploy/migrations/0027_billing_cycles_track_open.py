"""``billing_cycles_track_open``: a track's oldest unpaid cycle of an operator is one seek
(services/billing.py ``_settle`` pays them one at a time), however many it owes on the other
track."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return ["CREATE INDEX billing_cycles_track_open ON billing_cycles (operator_id, state, track, starts_at, id)"]
