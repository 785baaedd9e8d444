"""Tiers, deployments, audit entries, jobs and rate-limit counters."""

from __future__ import annotations


def statements(dialect: str) -> list[str]:
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    return [
        f"""CREATE TABLE tiers (
            id VARCHAR(36) PRIMARY KEY,
            slug VARCHAR(64) NOT NULL UNIQUE,
            name VARCHAR(255) NOT NULL,
            payment_method VARCHAR(32) NOT NULL,
            monthly_cost_points INTEGER,
            monthly_cost_sats BIGINT,
            memory_limit_mb INTEGER NOT NULL,
            cpu_limit_millicores INTEGER NOT NULL,
            custom_domain_allowed BOOLEAN NOT NULL,
            monthly_stipend_points INTEGER NOT NULL,
            ad_reach_multiplier {real} NOT NULL,
            max_deployments INTEGER NOT NULL,
            position INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE deployments (
            id VARCHAR(36) PRIMARY KEY,
            operator_id VARCHAR(255) NOT NULL,
            app_id VARCHAR(255) NOT NULL,
            deploy_tier_id VARCHAR(36) NOT NULL REFERENCES tiers (id),
            container_name VARCHAR(64) NOT NULL,
            container_image VARCHAR(512) NOT NULL,
            subdomain VARCHAR(32) NOT NULL,
            custom_domain VARCHAR(253),
            port INTEGER NOT NULL,
            host VARCHAR(255) NOT NULL,
            host_port INTEGER NOT NULL,
            status VARCHAR(16) NOT NULL,
            health_status VARCHAR(16) NOT NULL DEFAULT 'unknown',
            last_health_check TIMESTAMP,
            billing_status VARCHAR(16) NOT NULL DEFAULT 'active',
            next_billing_at TIMESTAMP NOT NULL,
            memory_limit_mb INTEGER NOT NULL,
            cpu_limit_millicores INTEGER NOT NULL,
            env_var_names TEXT NOT NULL DEFAULT '[]',
            env_vars_encrypted TEXT,
            image_digest VARCHAR(128),
            inserted_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            destroyed_at TIMESTAMP
        )""",
        # One live deployment per subdomain / custom domain / host port: the database
        # decides races between concurrent creates, not a check-then-insert.
        "CREATE UNIQUE INDEX deployments_live_subdomain ON deployments (subdomain)"
        " WHERE status <> 'destroyed'",
        "CREATE UNIQUE INDEX deployments_live_custom_domain ON deployments (custom_domain)"
        " WHERE status <> 'destroyed' AND custom_domain IS NOT NULL",
        "CREATE UNIQUE INDEX deployments_live_host_port ON deployments (host, host_port)"
        " WHERE status <> 'destroyed'",
        "CREATE INDEX deployments_operator_listing ON deployments (operator_id, inserted_at, id)",
        """CREATE TABLE audit_entries (
            id VARCHAR(36) PRIMARY KEY,
            deployment_id VARCHAR(36) NOT NULL REFERENCES deployments (id),
            action VARCHAR(16) NOT NULL,
            status VARCHAR(16) NOT NULL,
            initiated_by VARCHAR(255),
            details TEXT,
            inserted_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        )""",
        "CREATE INDEX audit_entries_deployment ON audit_entries (deployment_id, inserted_at)",
        f"""CREATE TABLE jobs (
            id {serial},
            deployment_id VARCHAR(36) NOT NULL REFERENCES deployments (id),
            audit_entry_id VARCHAR(36) REFERENCES audit_entries (id),
            action VARCHAR(16) NOT NULL,
            lock_key VARCHAR(255) NOT NULL,
            state VARCHAR(16) NOT NULL DEFAULT 'queued',
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            timeout_s INTEGER NOT NULL,
            run_after TIMESTAMP NOT NULL,
            lease_owner VARCHAR(255),
            lease_expires_at TIMESTAMP,
            last_error TEXT,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP
        )""",
        "CREATE INDEX jobs_open ON jobs (state, id)",
        "CREATE INDEX jobs_lock_key ON jobs (lock_key, state)",
        """CREATE TABLE rate_limit_counters (
            key VARCHAR(255) NOT NULL,
            window_start BIGINT NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key, window_start)
        )""",
    ]
