"""Desired state and convergence.

Deployments carry what they should be (``desired_state``, ``revision``) and a
``generation`` bumped by every change; ``observed_generation`` says how far the
host has converged. Resources (host ports, the custom domain) are held until the
teardown has converged (``released_at``), not merely until destroy was asked.
Each deployment holds a block of two host ports (``host_port`` and
``host_port + 1``) so a restart can start the new container beside the old one.

Jobs become "converge deployment D to generation >= G" (action ``converge``) or a
host-wide ``reconcile`` (no deployment), so ``jobs.deployment_id`` becomes
nullable: SQLite cannot drop NOT NULL in place, so the table is rebuilt there.
A job no longer completes one audit entry (``audit_entries.job_id`` links the
other way, many entries to one coalesced job) nor gives up after N attempts.
"""

from __future__ import annotations

_JOB_COLUMNS = (
    "id, deployment_id, action, lock_key, state, attempts, timeout_s,"
    " run_after, lease_owner, lease_expires_at, last_error, created_at, updated_at, finished_at"
)


def _jobs_table(name: str, serial: str) -> str:
    return f"""CREATE TABLE {name} (
            id {serial},
            deployment_id VARCHAR(36) REFERENCES deployments (id),
            action VARCHAR(16) NOT NULL,
            lock_key VARCHAR(255) NOT NULL,
            state VARCHAR(16) NOT NULL DEFAULT 'queued',
            attempts INTEGER NOT NULL DEFAULT 0,
            timeout_s INTEGER NOT NULL,
            run_after TIMESTAMP NOT NULL,
            lease_owner VARCHAR(255),
            lease_expires_at TIMESTAMP,
            last_error TEXT,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            host VARCHAR(255) NOT NULL DEFAULT '',
            generation INTEGER NOT NULL DEFAULT 0,
            reserved_for VARCHAR(255),
            result TEXT
        )"""


def statements(dialect: str) -> list[str]:
    out: list[str] = [
        "ALTER TABLE deployments ADD COLUMN desired_state VARCHAR(16) NOT NULL DEFAULT 'running'",
        "ALTER TABLE deployments ADD COLUMN generation INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE deployments ADD COLUMN observed_generation INTEGER NOT NULL DEFAULT 0",
        # A restart asks for a new container from the image as the tag is now: it bumps
        # the revision, which is part of the container's spec.
        "ALTER TABLE deployments ADD COLUMN revision INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE deployments ADD COLUMN observed_revision INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE deployments ADD COLUMN pull_image BOOLEAN NOT NULL DEFAULT FALSE",
        # The generation whose release failed for a reason of the app's own (bad image,
        # never answered): not retried until the next change.
        "ALTER TABLE deployments ADD COLUMN failed_generation INTEGER",
        "ALTER TABLE deployments ADD COLUMN serving_port INTEGER",
        "ALTER TABLE deployments ADD COLUMN container_id VARCHAR(128)",
        "ALTER TABLE deployments ADD COLUMN health_failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE deployments ADD COLUMN released_at TIMESTAMP",
        # Existing rows: what was destroyed is released; the rest converged as they are.
        "UPDATE deployments SET desired_state = 'absent', released_at = COALESCE(destroyed_at, updated_at)"
        " WHERE status = 'destroyed'",
        "UPDATE deployments SET desired_state = 'stopped' WHERE status = 'stopped'",
        "UPDATE deployments SET observed_generation = 1, observed_revision = 1, serving_port = host_port"
        " WHERE status IN ('running', 'stopped')",
        "DROP INDEX deployments_live_host_port",
        "DROP INDEX deployments_live_custom_domain",
        "CREATE UNIQUE INDEX deployments_held_host_port ON deployments (host, host_port)"
        " WHERE released_at IS NULL",
        "CREATE UNIQUE INDEX deployments_held_custom_domain ON deployments (custom_domain)"
        " WHERE released_at IS NULL AND custom_domain IS NOT NULL",
        "CREATE UNIQUE INDEX deployments_container_name ON deployments (container_name)",
        "CREATE INDEX deployments_host_held ON deployments (host, released_at)",
        # Which generation an API action asked for: its entry completes when the
        # deployment has converged that far.
        "ALTER TABLE audit_entries ADD COLUMN generation INTEGER",
        "ALTER TABLE audit_entries ADD COLUMN job_id BIGINT",
    ]
    if dialect == "postgres":
        out += [
            "ALTER TABLE jobs ALTER COLUMN deployment_id DROP NOT NULL",
            "ALTER TABLE jobs DROP COLUMN audit_entry_id",
            "ALTER TABLE jobs DROP COLUMN max_attempts",
            "ALTER TABLE jobs ADD COLUMN host VARCHAR(255) NOT NULL DEFAULT ''",
            "ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN reserved_for VARCHAR(255)",
            "ALTER TABLE jobs ADD COLUMN result TEXT",
        ]
    else:
        # job_events references jobs: checked at commit, when jobs exists again.
        out += [
            "PRAGMA defer_foreign_keys = ON",
            _jobs_table("jobs_rebuilt", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            f"INSERT INTO jobs_rebuilt ({_JOB_COLUMNS}) SELECT {_JOB_COLUMNS} FROM jobs",  # noqa: S608 - constants
            "DROP TABLE jobs",
            "ALTER TABLE jobs_rebuilt RENAME TO jobs",
            "CREATE INDEX jobs_open ON jobs (state, id)",
            "CREATE INDEX jobs_lock_key ON jobs (lock_key, state)",
        ]
    out += [
        "UPDATE jobs SET host = (SELECT d.host FROM deployments d WHERE d.id = jobs.deployment_id)"
        " WHERE deployment_id IS NOT NULL",
        "CREATE INDEX jobs_deployment_open ON jobs (deployment_id, state)",
    ]
    return out
