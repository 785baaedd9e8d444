"""Deploy tiers."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from .common import BillingTrackField


class TierOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    payment_method: BillingTrackField
    monthly_cost_points: int | None
    monthly_cost_sats: int | None
    memory_limit_mb: int
    cpu_limit_millicores: int
    custom_domain_allowed: bool
    monthly_stipend_points: int
    ad_reach_multiplier: float
    max_deployments: int
    pids_limit: int = Field(description="Most processes (and threads) a deployment's container may run")
    log_max_size_mb: int = Field(description="Size in MB at which a container's log is truncated")
    disk_limit_mb: int = Field(description="Most MB a deployment's container may write; writes beyond fail in the app")
