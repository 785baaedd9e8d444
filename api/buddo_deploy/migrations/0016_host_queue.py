"""Work is queued per host: a converge job names a host, and the deployments it converges are its targets.

``job_targets``: one row per deployment a host's converge covers, with the generation it
converges that deployment to and that deployment's own outcome (state, last_error,
failed_task): the deployment's view of the shared run. Existing converge jobs (one
deployment each) become host runs of one target. Converges and reconciles of a host
share the lock key ``<host>/``.
"""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    return [
        """CREATE TABLE job_targets (
            job_id BIGINT NOT NULL REFERENCES jobs (id),
            deployment_id VARCHAR(36) NOT NULL REFERENCES deployments (id),
            generation INTEGER NOT NULL,
            state VARCHAR(16) NOT NULL,
            last_error TEXT,
            failed_task VARCHAR(512),
            PRIMARY KEY (job_id, deployment_id)
        )""",
        "CREATE INDEX job_targets_deployment ON job_targets (deployment_id, job_id)",
        "INSERT INTO job_targets (job_id, deployment_id, generation, state, last_error)"
        " SELECT id, deployment_id, generation, state, last_error FROM jobs"
        " WHERE action = 'converge' AND deployment_id IS NOT NULL",
        "UPDATE jobs SET deployment_id = NULL, lock_key = host || '/' WHERE action = 'converge'",
    ]
