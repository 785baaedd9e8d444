"""Shared fixtures: settings on SQLite and on the real PostgreSQL, a Falcon test client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from buddo_deploy import jobqueue
from buddo_deploy.app import create_app
from buddo_deploy.models import database_proxy
from buddo_deploy.settings import Settings

from tests.helpers import create_session_database, drop_session_database, make_settings, migrate

# The Cloudflare fake's fixtures (cloudflare), for the DNS module, engine and e2e tests.
pytest_plugins = ["tests.fakes.fixtures"]


@pytest.fixture(autouse=True)
def converges_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests claim a converge the moment they queue it (test_jobs tests the settle)."""
    monkeypatch.setattr(jobqueue, "SETTLE_S", 0.0)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[None]:
    create_session_database()
    yield
    drop_session_database()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_database")
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path, backend: str) -> Settings:
    return make_settings(tmp_path, backend)


@pytest.fixture
def client(settings: Settings) -> Iterator[falcon.testing.TestClient]:
    migrate(settings)
    app = create_app(settings)
    yield falcon.testing.TestClient(app)
    database_proxy.obj.close()




@pytest.fixture
def client_with(tmp_path: Path, backend: str) -> Iterator[Callable[..., falcon.testing.TestClient]]:
    """A client on settings with overrides, e.g. client_with(rate_limit_write=2)."""

    def build(**overrides: Any) -> falcon.testing.TestClient:
        settings = make_settings(tmp_path, backend, **overrides)
        migrate(settings)
        return falcon.testing.TestClient(create_app(settings))

    yield build
    if database_proxy.obj is not None:
        database_proxy.obj.close()
