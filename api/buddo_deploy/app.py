"""The one place that wires the application together."""

from __future__ import annotations

from typing import Any

import falcon

from . import errors, metrics
from .auth import Auth
from .db import open_database
from .inventory import container_hosts, host_labels
from .middleware import Database, Idempotency, RequestId, RequestMetrics
from .ratelimit import ConcurrencyLimit, RateLimit
from .resources.apps import AppsResource
from .resources.billing import BillingResource, PaymentsResource
from .resources.internal import DomainCheckResource
from .resources.jobs import JobsResource
from .resources.metrics import MetricsResource
from .resources.openapi import OpenApiResource
from .resources.registry_logins import RegistryLoginsResource
from .resources.tiers import TiersResource
from .resources.webhooks import WebhooksResource
from .schemas import ValidationContext
from .services.lifecycle import Lifecycle
from .services.registry_logins import RegistryLogins
from .services.tiers import load_tier_file
from .services.webhooks import Webhooks
from .settings import Settings


def validation_context(settings: Settings) -> ValidationContext:
    """What request validation and the OpenAPI document both take from the settings."""
    return ValidationContext(
        allowed_registries=settings.allowed_registries,
        reserved_subdomains=tuple(sorted({*settings.reserved_subdomains, *host_labels(settings.inventory)})),
        base_domain=settings.base_domain,
        tier_slugs=tuple(entry["slug"] for entry in load_tier_file(settings.tiers_file)),
    )


def create_app(settings: Settings | None = None) -> falcon.App[falcon.Request, falcon.Response]:
    settings = settings or Settings.from_env()
    # Placement reads the container hosts on every create: a malformed inventory stops the start.
    container_hosts(settings.inventory, settings.host_port_range)
    db = open_database(settings.database_url)
    metrics.prepare(settings.var_dir)
    limiter = RateLimit(settings)
    middleware: list[Any] = [RequestId(), RequestMetrics(metrics.observe_request), Database(db),
                             Auth(settings, limiter.rejected), ConcurrencyLimit(settings.operator_concurrency),
                             limiter, Idempotency(settings.secret_key, settings.max_body_bytes)]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    lifecycle = Lifecycle(settings)
    context = validation_context(settings)
    apps = AppsResource(lifecycle, context)
    app.add_route("/api/deploy/openapi.json", OpenApiResource(context))
    ask = DomainCheckResource(settings.ask_secret, settings.cert_budget_per_domain, settings.cert_budget_per_hour,
                              limiter.rejected, limiter.count)
    app.add_route("/api/deploy/internal/domain-check", ask)
    app.add_route("/api/deploy/tiers", TiersResource())
    app.add_route("/api/deploy/apps", apps)
    app.add_route("/api/deploy/apps/{deployment_id:uuid}", apps, suffix="item")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/status", apps, suffix="status")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/logs", apps, suffix="logs")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/restart", apps, suffix="restart")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/stop", apps, suffix="stop")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/releases", apps, suffix="releases")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/rollback", apps, suffix="rollback")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/output", apps, suffix="output")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/runs", apps, suffix="runs")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/runs/{run_id:uuid}", apps, suffix="run")
    app.add_route("/api/deploy/billing", BillingResource(lifecycle.billing))
    app.add_route("/api/deploy/billing/payments", PaymentsResource(lifecycle.billing, settings.billing_webhook_secret))
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/jobs/{job_id}", JobsResource(lifecycle))
    logins = RegistryLoginsResource(RegistryLogins(settings), context, settings.max_body_bytes)
    app.add_route("/api/deploy/registry-logins", logins)
    app.add_route("/api/deploy/registry-logins/{registry}", logins, suffix="item")
    webhooks = WebhooksResource(Webhooks(settings), settings.max_body_bytes)
    app.add_route("/api/deploy/webhooks", webhooks)
    app.add_route("/api/deploy/webhooks/{webhook_id:uuid}", webhooks, suffix="item")
    app.add_route("/api/deploy/webhooks/{webhook_id:uuid}/deliveries", webhooks, suffix="deliveries")
    app.add_route("/metrics", MetricsResource(lambda: metrics.exposition(metrics.fleet_families()),
                                              settings.metrics_allow))
    return app
