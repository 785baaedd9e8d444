"""Services own every state change: lifecycle of deployments, tiers, the job queue."""
