"""A local fake of Cloudflare's v4 API (zones and DNS records), for tests only.

The platform's DNS code talks to it exactly as to https://api.cloudflare.com/client/v4:
same paths, bearer tokens, the ``{success, errors, messages, result, result_info}``
envelope, page-number pagination and the API's error codes. Tests start it with
``FakeCloudflare()`` (a threaded HTTP server on a free loopback port); by hand:

    python -m tests.fakes.cloudflare --port 8788 --zone buddocloud.com --token dev-token

Behaviour copied from the real API (codes seen in its answers in public bug reports):

| situation | HTTP | code(s) |
|---|---|---|
| Authorization not ``Bearer <token>`` | 400 | 6003 "Invalid request headers", chain 6111 |
| unknown token; token without access to the zone or without write permission | 403 | 10000 "Authentication error" |
| unknown zone id in the path | 400 | 7003 "Could not route to <path>, perhaps your object identifier ...", 7000 |
| unknown record id | 404 | 81044 "Record does not exist." |
| same type, name and content as a record (other settings) | 400 | 81057 "Record already exists." |
| ... and the same ttl and proxied too | 400 | 81058 "An identical record already exists." |
| A/AAAA beside a CNAME of that name; a CNAME beside A/AAAA/CNAME | 400 | 81054 / 81053 |
| invalid name | 400 | 9000 "DNS name is invalid." |
| A/AAAA content not an IPv4/IPv6 address | 400 | 9005 / 9006 |
| ttl not 1 (automatic) nor 60..86400 | 400 | 1004 "DNS Validation Error", chain 9021 "Invalid TTL ..." |
| proxied on a type that cannot be | 400 | 1004, chain 9041 |
| CNAME pointing at its own name | 400 | 9039 |
| unknown record type | 400 | 1004 "DNS Validation Error" |

Also as the real API: a name outside the zone is taken as relative to it
(``foo.example.org`` in zone ``example.com`` becomes ``foo.example.org.example.com``),
``@`` is the apex, names are lower-cased; proxied records get ttl 1; an empty
comment removes it; comment filters are case-insensitive; ``result_info.total_pages``
is at least 1. Chosen here where public material is silent: a missing
Authorization header is 401 with code 10000, a wrong method 405 with 7001, a body
that is not a JSON object 400 with 9207, the chain code 9007 for bad CNAME content.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import math
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/client/v4"
RECORD_TYPES = {"A", "AAAA", "CAA", "CERT", "CNAME", "DNSKEY", "DS", "HTTPS", "LOC", "MX", "NAPTR", "NS",
                "PTR", "SMIMEA", "SRV", "SSHFP", "SVCB", "TLSA", "TXT", "URI"}
PROXIABLE = {"A", "AAAA", "CNAME"}
ORDER_FIELDS = {"type", "name", "content", "ttl", "proxied"}
_LABEL = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)$")
_TOKEN = re.compile(r"^Bearer ([A-Za-z0-9_-]+)$")


class ApiError(Exception):
    def __init__(self, status: int, *errors: dict[str, Any]) -> None:
        super().__init__(errors[0]["message"])
        self.status = status
        self.errors = list(errors)


def _err(code: int, message: str, chain: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if chain:
        error["error_chain"] = [{"code": c, "message": m} for c, m in chain]
    return error


def _validation(code: int, message: str) -> ApiError:
    return ApiError(400, _err(1004, "DNS Validation Error", [(code, message)]))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Token:
    zones: frozenset[str] | None = None  # None: every zone
    write: bool = True


@dataclass
class CloudflareState:
    """Zones, records and tokens of the fake account; every request it answered."""

    zones: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_zone(self, name: str) -> str:
        ident = uuid.uuid4().hex
        with self.lock:
            self.zones[ident] = {
                "id": ident, "name": name.lower(), "status": "active", "paused": False, "type": "full",
                "development_mode": 0, "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
                "created_on": _now(), "modified_on": _now(), "activated_on": _now(),
                "account": {"id": "0" * 32, "name": "Buddo Deploy tests"},
            }
            self.records[ident] = {}
        return ident

    def add_token(self, token: str, *, zones: list[str] | None = None, write: bool = True) -> None:
        with self.lock:
            self.tokens[token] = Token(frozenset(zones) if zones is not None else None, write)

    def zone_named(self, name: str) -> str:
        return next(z for z, zone in self.zones.items() if zone["name"] == name)

    def put_record(self, zone_id: str, **fields: Any) -> dict[str, Any]:
        """Create a record as if by hand in the dashboard (validated like the API does)."""
        with self.lock:
            return _create(self, zone_id, fields)

    def records_of(self, zone_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.records[zone_id].values()]


def _normalise_name(name: Any, zone: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, _err(9000, "DNS name is invalid."))
    name = name.strip().rstrip(".").lower()
    if name == "@":
        name = zone
    elif name != zone and not name.endswith("." + zone):
        name = f"{name}.{zone}"
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels) or "*" in labels[1:]:
        raise ApiError(400, _err(9000, "DNS name is invalid."))
    return name


def _hostname(value: str) -> bool:
    labels = value.rstrip(".").lower().split(".")
    return 0 < len(value) <= 253 and len(labels) > 1 and all(_LABEL.match(x) and x != "*" for x in labels)


def _validate(state: CloudflareState, zone_id: str, body: dict[str, Any], own_id: str | None) -> dict[str, Any]:
    """The record as it would be stored, or ApiError, as the API checks a create or an update."""
    zone = state.zones[zone_id]["name"]
    rtype = body.get("type")
    if rtype not in RECORD_TYPES:
        raise ApiError(400, _err(1004, "DNS Validation Error"))
    name = _normalise_name(body.get("name"), zone)
    content = body.get("content")
    if rtype == "A":
        try:
            content = str(ipaddress.IPv4Address(str(content)))
        except ValueError:
            raise ApiError(400, _err(9005, "Content for A record must be a valid IPv4 address.")) from None
    elif rtype == "AAAA":
        try:
            content = str(ipaddress.IPv6Address(str(content)))
        except ValueError:
            raise ApiError(400, _err(9006, "Content for AAAA record must be a valid IPv6 address.")) from None
    elif rtype == "CNAME":
        if not isinstance(content, str) or not _hostname(content):
            raise _validation(9007, "Content for CNAME record is invalid.")
        content = content.rstrip(".").lower()
        if content == name:
            raise ApiError(400, _err(9039, "CNAME content cannot reference itself."))
    elif not isinstance(content, str) or not content:
        raise ApiError(400, _err(1004, "DNS Validation Error"))
    ttl = body.get("ttl", 1)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
        raise _validation(9021, "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for automatic.")
    proxied = body.get("proxied", False)
    if not isinstance(proxied, bool):
        raise ApiError(400, _err(1004, "DNS Validation Error"))
    if proxied and rtype not in PROXIABLE:
        raise _validation(9041, "Invalid proxied mode. Record cannot be proxied")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise ApiError(400, _err(1004, "DNS Validation Error"))
    record = {"type": rtype, "name": name, "content": content, "ttl": 1 if proxied else ttl,
              "proxied": proxied, "comment": comment or None}
    for other in state.records[zone_id].values():
        if other["id"] == own_id or other["name"] != name:
            continue
        if rtype == "CNAME" and other["type"] in PROXIABLE:
            raise ApiError(400, _err(81053, "An A, AAAA, or CNAME record with that host already exists."))
        if rtype in {"A", "AAAA"} and other["type"] == "CNAME":
            raise ApiError(400, _err(81054, "A CNAME record with that host already exists."))
        if other["type"] == rtype and other["content"] == content:
            if other["ttl"] == record["ttl"] and other["proxied"] == proxied:
                raise ApiError(400, _err(81058, "An identical record already exists."))
            raise ApiError(400, _err(81057, "Record already exists."))
    return record


def _create(state: CloudflareState, zone_id: str, body: dict[str, Any]) -> dict[str, Any]:
    fields = _validate(state, zone_id, body, None)
    now = _now()
    record = {
        "id": uuid.uuid4().hex, "zone_id": zone_id, "zone_name": state.zones[zone_id]["name"], **fields,
        "proxiable": fields["type"] in PROXIABLE, "locked": False, "settings": {}, "tags": [],
        "meta": {"auto_added": False, "managed_by_apps": False, "managed_by_argo_tunnel": False},
        "created_on": now, "modified_on": now,
    }
    if fields["comment"] is not None:
        record["comment_modified_on"] = now
    state.records[zone_id][record["id"]] = record
    return dict(record)


def _update(state: CloudflareState, zone_id: str, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    fields = _validate(state, zone_id, body, record["id"])
    now = _now()
    if fields["comment"] != record.get("comment"):
        record["comment_modified_on"] = now
    record.update(fields, proxiable=fields["type"] in PROXIABLE, modified_on=now)
    return dict(record)


def _matches(value: str | None, query: dict[str, str], key: str, *, fold: bool = False) -> list[bool]:
    """One bool per filter on ``key`` given in the query (exact, contains, startswith, endswith...)."""
    text = (value or "").lower() if fold else (value or "")
    found = []
    for suffix, test in (("", str.__eq__), (".exact", str.__eq__), (".contains", str.__contains__),
                         (".startswith", str.startswith), (".endswith", str.endswith)):
        if key + suffix in query:
            wanted = query[key + suffix].lower() if fold else query[key + suffix]
            found.append(bool(test(text, wanted)))
    if key == "comment":
        if "comment.present" in query:
            found.append(value is not None)
        if "comment.absent" in query:
            found.append(value is None)
    return found


def _int(query: dict[str, str], key: str, default: int) -> int:
    try:
        return int(query.get(key, default))
    except ValueError:
        return default


def _list_records(state: CloudflareState, zone_id: str, query: dict[str, str]) -> tuple[list[Any], dict[str, int]]:
    records = list(state.records[zone_id].values())
    if "type" in query:
        records = [r for r in records if r["type"] == query["type"]]
    selected = []
    for record in records:
        checks = (_matches(record["name"], query, "name", fold=True)
                  + _matches(record["content"], query, "content")
                  + _matches(record.get("comment"), query, "comment", fold=True))
        if "proxied" in query:
            checks.append(record["proxied"] == (query["proxied"].lower() == "true"))
        if "search" in query:
            needle = query["search"].lower()
            checks.append(any(needle in str(record.get(k) or "").lower() for k in ("name", "content", "comment")))
        if not checks or (any(checks) if query.get("match") == "any" else all(checks)):
            selected.append(record)
    order = query.get("order", "type")
    order = order if order in ORDER_FIELDS else "type"
    selected.sort(key=lambda r: (str(r[order]), r["name"], r["content"]), reverse=query.get("direction") == "desc")
    per_page = min(max(_int(query, "per_page", 100), 5), 5_000_000)
    page = max(_int(query, "page", 1), 1)
    chunk = selected[(page - 1) * per_page: page * per_page]
    info = {"page": page, "per_page": per_page, "count": len(chunk), "total_count": len(selected),
            "total_pages": max(1, math.ceil(len(selected) / per_page))}
    return [dict(r) for r in chunk], info


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: tests read FakeCloudflare.state.requests instead

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        state = self.server.state
        with state.lock:
            state.requests.append((method, url.path, query))
            try:
                status, payload = 200, self._route(method, url.path, query, raw)
            except ApiError as exc:
                status, payload = exc.status, {"success": False, "errors": exc.errors, "messages": [],
                                               "result": None}
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _token(self, write: bool, zone_id: str | None = None) -> None:
        header = self.headers.get("Authorization")
        if header is None:
            raise ApiError(401, _err(10000, "Authentication error"))
        match = _TOKEN.match(header)
        if match is None:
            raise ApiError(400, _err(6003, "Invalid request headers",
                                     [(6111, "Invalid format for Authorization header")]))
        token = self.server.state.tokens.get(match.group(1))
        if token is None or (write and not token.write) or (
                zone_id is not None and token.zones is not None and zone_id not in token.zones):
            raise ApiError(403, _err(10000, "Authentication error"))

    def _body(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(400, _err(9207, "Request body is invalid."))
        return body

    def _route(self, method: str, path: str, query: dict[str, str], raw: bytes) -> dict[str, Any]:
        state = self.server.state
        if not path.startswith(PREFIX + "/"):
            raise ApiError(400, _err(7000, "No route for that URI"))
        parts = path[len(PREFIX) + 1:].rstrip("/").split("/")
        allowed = {("user", "tokens", "verify"): {"GET"}, ("zones",): {"GET"}}.get(tuple(parts))
        if parts[0] == "zones" and len(parts) in (2, 3, 4) and (len(parts) == 2 or parts[2] == "dns_records"):
            allowed = [{"GET"}, {"GET", "POST"}, {"GET", "PUT", "PATCH", "DELETE"}][len(parts) - 2]
        if allowed is None:
            raise ApiError(400, _err(7000, "No route for that URI"))
        if method not in allowed:
            raise ApiError(405, _err(7001, f"Method {method} not available for that URI."))
        self._token(write=method != "GET", zone_id=parts[1] if len(parts) > 1 and parts[0] == "zones" else None)
        if parts == ["user", "tokens", "verify"]:
            return _ok({"id": uuid.uuid4().hex, "status": "active"},
                       messages=[{"code": 10000, "message": "This API Token is valid and active", "type": None}])
        if parts == ["zones"]:
            return self._zones(query)
        zone_id = parts[1]
        if zone_id not in state.zones:
            raise ApiError(400, _err(7003, f"Could not route to {path}, perhaps your object identifier is invalid?"),
                           _err(7000, "No route for that URI"))
        if len(parts) == 2:
            return _ok(dict(state.zones[zone_id]))
        if len(parts) == 3:
            if method == "POST":
                return _ok(_create(state, zone_id, self._body(raw)))
            result, info = _list_records(state, zone_id, query)
            return _ok(result, info)
        record = state.records[zone_id].get(parts[3])
        if record is None:
            raise ApiError(404, _err(81044, "Record does not exist."))
        if method == "GET":
            return _ok(dict(record))
        if method == "DELETE":
            del state.records[zone_id][record["id"]]
            return _ok({"id": record["id"]})
        body = self._body(raw)
        if method == "PATCH":
            body = {k: record.get(k) for k in ("type", "name", "content", "ttl", "proxied", "comment")} | body
        return _ok(_update(state, zone_id, record, body))

    def _zones(self, query: dict[str, str]) -> dict[str, Any]:
        state = self.server.state
        header = _TOKEN.match(self.headers.get("Authorization") or "")
        token = state.tokens[header.group(1)] if header else Token()
        zones = [z for z in state.zones.values() if token.zones is None or z["id"] in token.zones]
        if "name" in query:
            zones = [z for z in zones if z["name"] == query["name"].lower()]
        if "status" in query:
            zones = [z for z in zones if z["status"] == query["status"]]
        per_page = min(max(_int(query, "per_page", 20), 5), 50)
        page = max(_int(query, "page", 1), 1)
        chunk = zones[(page - 1) * per_page: page * per_page]
        return _ok([dict(z) for z in chunk], {"page": page, "per_page": per_page, "count": len(chunk),
                                              "total_count": len(zones),
                                              "total_pages": max(1, math.ceil(len(zones) / per_page))})


def _ok(result: Any, info: dict[str, int] | None = None, messages: list[Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"success": True, "errors": [], "messages": messages or [], "result": result}
    if info is not None:
        payload["result_info"] = info
    return payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: CloudflareState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class FakeCloudflare:
    """The fake on a loopback port, serving in a thread until stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state: CloudflareState | None = None) -> None:
        self.state = state or CloudflareState()
        self._server = _Server((host, port), self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-cloudflare", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{PREFIX}"

    def start(self) -> FakeCloudflare:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeCloudflare:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8788)
    parser.add_argument("--zone", action="append", default=[], help="a zone to create (repeatable)")
    parser.add_argument("--token", action="append", default=[], help="a token with access to every zone")
    args = parser.parse_args()
    fake = FakeCloudflare(args.host, args.port)
    for name in args.zone or ["example.com"]:
        print(f"zone {name}: {fake.state.add_zone(name)}", flush=True)
    for token in args.token or ["dev-token"]:
        fake.state.add_token(token)
    print(f"serving {fake.url} (Ctrl-C stops)", flush=True)
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main()
