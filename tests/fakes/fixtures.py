"""pytest fixtures around the Cloudflare fake (a plugin of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes.cloudflare import FakeCloudflare

ZONE = "buddo.test"
TOKEN = "cf-test-token-1f0e9d8c7b6a"  # a literal the secrets tests search every file for


@dataclass
class CloudflareFixture:
    fake: FakeCloudflare
    zone: str
    zone_id: str
    token: str

    @property
    def url(self) -> str:
        return self.fake.url

    def records(self) -> list[dict[str, object]]:
        return self.fake.state.records_of(self.zone_id)


@pytest.fixture
def cloudflare() -> Iterator[CloudflareFixture]:
    """A fresh fake account: zone buddo.test, one token with DNS edit on it."""
    with FakeCloudflare() as fake:
        zone_id = fake.state.add_zone(ZONE)
        fake.state.add_zone("other.test")
        fake.state.add_token(TOKEN)
        yield CloudflareFixture(fake, ZONE, zone_id, TOKEN)
