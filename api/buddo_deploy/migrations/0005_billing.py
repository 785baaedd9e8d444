"""Billing: operator accounts, billing cycles, an append-only ledger and the billing lease.

``billing_cycles`` holds one row per started cycle of a deployment; the unique key
``(deployment_id, cycle)`` is what makes a cycle start (and be charged) once, however
many workers and API processes race for it. ``billing_ledger`` is every movement of
a balance; the database refuses to change or delete its rows, and its unique keys
make a cycle's charge and stipend, and a payment's reference, count once.
``deployments.billing_cycle`` is the number of the next cycle to start (its start is
``next_billing_at``).
"""

from __future__ import annotations


def _serial(dialect: str) -> str:
    return "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"


def _immutable(dialect: str) -> list[str]:
    if dialect == "postgres":
        return [
            "CREATE FUNCTION billing_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'the billing ledger is append-only'; END $$",
            "CREATE TRIGGER billing_ledger_immutable BEFORE UPDATE OR DELETE ON billing_ledger"
            " FOR EACH ROW EXECUTE FUNCTION billing_ledger_append_only()",
        ]
    return [
        f"CREATE TRIGGER billing_ledger_no_{verb.lower()} BEFORE {verb} ON billing_ledger"
        " BEGIN SELECT RAISE(ABORT, 'the billing ledger is append-only'); END"
        for verb in ("UPDATE", "DELETE")
    ]


def statements(dialect: str) -> list[str]:
    return [
        """CREATE TABLE billing_accounts (
            operator_id VARCHAR(255) PRIMARY KEY,
            points_balance BIGINT NOT NULL DEFAULT 0 CHECK (points_balance >= 0),
            sats_balance BIGINT NOT NULL DEFAULT 0 CHECK (sats_balance >= 0),
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        )""",
        f"""CREATE TABLE billing_cycles (
            id {_serial(dialect)},
            deployment_id VARCHAR(36) NOT NULL REFERENCES deployments (id),
            cycle INTEGER NOT NULL,
            operator_id VARCHAR(255) NOT NULL,
            track VARCHAR(16) NOT NULL,
            amount BIGINT NOT NULL,
            stipend_points BIGINT NOT NULL,
            starts_at TIMESTAMP NOT NULL,
            state VARCHAR(16) NOT NULL,
            paid_at TIMESTAMP,
            created_at TIMESTAMP NOT NULL,
            UNIQUE (deployment_id, cycle)
        )""",
        "CREATE INDEX billing_cycles_open ON billing_cycles (operator_id, state, starts_at)",
        f"""CREATE TABLE billing_ledger (
            id {_serial(dialect)},
            operator_id VARCHAR(255) NOT NULL,
            kind VARCHAR(16) NOT NULL,
            track VARCHAR(16) NOT NULL,
            amount BIGINT NOT NULL,
            deployment_id VARCHAR(36) REFERENCES deployments (id),
            cycle INTEGER,
            reference VARCHAR(255),
            details TEXT,
            created_at TIMESTAMP NOT NULL
        )""",
        "CREATE UNIQUE INDEX billing_ledger_cycle ON billing_ledger (deployment_id, cycle, kind)"
        " WHERE deployment_id IS NOT NULL",
        "CREATE UNIQUE INDEX billing_ledger_reference ON billing_ledger (reference) WHERE reference IS NOT NULL",
        "CREATE INDEX billing_ledger_operator ON billing_ledger (operator_id, id)",
        *_immutable(dialect),
        """CREATE TABLE leases (
            name VARCHAR(64) PRIMARY KEY,
            owner VARCHAR(255),
            expires_at TIMESTAMP
        )""",
        "INSERT INTO leases (name) VALUES ('billing')",
        "ALTER TABLE deployments ADD COLUMN billing_cycle INTEGER NOT NULL DEFAULT 0",
        # Deployments from before billing: their first cycle was free; the next one
        # starts at the next_billing_at they were given.
        "UPDATE deployments SET billing_cycle = 1",
        "UPDATE deployments SET billing_status = 'cancelled' WHERE desired_state = 'absent'",
        "CREATE INDEX deployments_billing_due ON deployments (billing_status, next_billing_at)",
    ]
