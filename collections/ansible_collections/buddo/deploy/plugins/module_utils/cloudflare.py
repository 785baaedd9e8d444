"""Cloudflare's v4 API as the DNS modules use it: one session, the envelope, pages, errors with codes."""

from __future__ import annotations

import re
from typing import Any

try:
    import requests as requests  # re-exported: the modules test it for None
except ImportError:  # reported by the module (missing_required_lib), not as a traceback
    requests = None  # type: ignore[assignment]

DEFAULT_API_URL = "https://api.cloudflare.com/client/v4"
# The options every module of ours that talks to the API takes.
CONNECTION_ARGS: dict[str, dict[str, Any]] = {
    "api_url": {"type": "str", "default": DEFAULT_API_URL},
    "api_token": {"type": "str", "required": True, "no_log": True},
    "zone": {"type": "str", "required": True},
}
RECORD_FIELDS = ("type", "name", "content", "ttl", "proxied", "comment")
_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")
# A guard against an API that never says the last page was reached.
MAX_PAGES = 10_000


class CloudflareError(Exception):
    """A call that failed; the message names the call, the HTTP status and the API's codes (never the token)."""

    def __init__(self, message: str, status: int | None = None, codes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


def _describe(errors: list[Any]) -> tuple[str, tuple[int, ...]]:
    parts, codes = [], []
    for error in errors or []:
        if not isinstance(error, dict):
            continue
        code = error.get("code")
        if isinstance(code, int):
            codes.append(code)
        text = f"{code} {error.get('message', '')}".strip()
        chain = error.get("error_chain") or []
        if chain:
            inner, inner_codes = _describe(chain)
            text += f" ({inner})"
            codes.extend(inner_codes)
        parts.append(text)
    return "; ".join(parts) or "no error detail", tuple(codes)


class Cloudflare:
    """A client of one API base URL with one bearer token."""

    def __init__(self, api_url: str, token: str, timeout: float = 30) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # No proxy from the environment and no ~/.netrc: a netrc entry for the API host
        # would replace the Authorization header.
        self.session.trust_env = False
        self.session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The envelope of one successful call; CloudflareError otherwise."""
        where = f"{method} {path}"
        try:
            response = self.session.request(method, self.api_url + path, params=params, json=body,
                                            timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise CloudflareError(f"Cloudflare API at {self.api_url} could not be reached ({where}): "
                                  f"{exc.__class__.__name__}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or "success" not in payload:
            raise CloudflareError(f"Cloudflare API {where} answered HTTP {response.status_code} without the "
                                  "API's JSON envelope", response.status_code)
        if not payload.get("success") or response.status_code >= 400:
            text, codes = _describe(payload.get("errors") or [])
            raise CloudflareError(f"Cloudflare API {where} failed (HTTP {response.status_code}): {text}",
                                  response.status_code, codes)
        return payload

    def pages(self, path: str, params: dict[str, Any], per_page: int = 100) -> tuple[list[dict[str, Any]], int]:
        """Every item of a paginated list (page by page until total_pages), and the number of calls."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            payload = self.call("GET", path, {**params, "page": page, "per_page": per_page})
            items.extend(payload.get("result") or [])
            total = int((payload.get("result_info") or {}).get("total_pages") or 1)
            if page >= total or page >= MAX_PAGES or not payload.get("result"):
                return items, page
            page += 1

    def zone(self, zone: str) -> dict[str, Any]:
        """The zone by id (32 hex digits) or by name: {id, name}."""
        if _ZONE_ID.match(zone):
            result = self.call("GET", f"/zones/{zone}")["result"]
            return {"id": result["id"], "name": result["name"]}
        found = self.call("GET", "/zones", {"name": zone.rstrip(".").lower()})["result"] or []
        if len(found) != 1:
            raise CloudflareError(f"Cloudflare zone {zone} not found (or the token may not read it)")
        return {"id": found[0]["id"], "name": found[0]["name"]}

    def records(self, zone_id: str, per_page: int = 100, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.pages(f"/zones/{zone_id}/dns_records", params, per_page)


def fqdn(name: str, zone: str) -> str:
    """A record name as the API stores it: lower case, no trailing dot, relative names under the zone."""
    name = name.strip().rstrip(".").lower()
    if name == "@":
        return zone
    return name if name == zone or name.endswith("." + zone) else f"{name}.{zone}"


def fields(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record a module manages (and shows in a diff)."""
    return {k: record.get(k) for k in RECORD_FIELDS}
