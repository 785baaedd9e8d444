"""The one place that wires the application together."""

from __future__ import annotations

from typing import Any

import falcon

from . import errors, metrics
from .auth import Auth
from .db import open_database
from .middleware import Database, RequestId, RequestMetrics
from .ratelimit import RateLimit
from .resources.apps import AppsResource
from .resources.internal import DomainCheckResource
from .resources.jobs import JobsResource
from .resources.metrics import MetricsResource
from .resources.openapi import OpenApiResource
from .resources.tiers import TiersResource
from .services.lifecycle import Lifecycle
from .settings import Settings


def create_app(settings: Settings | None = None) -> falcon.App[falcon.Request, falcon.Response]:
    settings = settings or Settings.from_env()
    db = open_database(settings.database_url)
    metrics.prepare(settings.var_dir)
    middleware: list[Any] = [RequestId(), RequestMetrics(metrics.observe_request), Database(db), Auth(settings),
                             RateLimit(settings)]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    lifecycle = Lifecycle(settings)
    apps = AppsResource(lifecycle)
    app.add_route("/api/deploy/openapi.json", OpenApiResource())
    app.add_route("/api/deploy/internal/domain-check", DomainCheckResource(lifecycle))
    app.add_route("/api/deploy/tiers", TiersResource())
    app.add_route("/api/deploy/apps", apps)
    app.add_route("/api/deploy/apps/{deployment_id:uuid}", apps, suffix="item")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/status", apps, suffix="status")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/logs", apps, suffix="logs")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/restart", apps, suffix="restart")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/stop", apps, suffix="stop")
    app.add_route("/api/deploy/apps/{deployment_id:uuid}/jobs/{job_id}", JobsResource(lifecycle))
    app.add_route("/metrics", MetricsResource(lambda: metrics.exposition(metrics.fleet_families()),
                                              settings.metrics_allow))
    return app
