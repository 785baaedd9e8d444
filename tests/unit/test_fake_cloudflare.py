"""The Cloudflare fake speaks the v4 wire format: envelope, bearer auth, pagination, the API's error codes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.fakes.fixtures import CloudflareFixture
from tests.helpers import free_port


def call(cf: CloudflareFixture, method: str, path: str, *, token: str | None = None,
         headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    sent = {"Authorization": f"Bearer {token or cf.token}", **(headers or {})}
    response = requests.request(method, cf.url + path, headers=sent, timeout=5, **kwargs)
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()


def codes(payload: dict[str, Any]) -> list[int]:
    return [e["code"] for e in payload["errors"]]


def records(cf: CloudflareFixture) -> str:
    return f"/zones/{cf.zone_id}/dns_records"


def test_envelope_zones_by_name_and_id(cloudflare: CloudflareFixture) -> None:
    status, body = call(cloudflare, "GET", "/zones", params={"name": "buddo.test"})
    assert status == 200
    assert set(body) == {"success", "errors", "messages", "result", "result_info"}
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    [zone] = body["result"]
    assert zone["id"] == cloudflare.zone_id and zone["name"] == "buddo.test" and zone["status"] == "active"
    assert body["result_info"] == {"page": 1, "per_page": 20, "count": 1, "total_count": 1, "total_pages": 1}
    status, body = call(cloudflare, "GET", f"/zones/{cloudflare.zone_id}")
    assert status == 200 and body["result"]["name"] == "buddo.test" and "result_info" not in body
    assert call(cloudflare, "GET", "/zones", params={"name": "nope.test"})[1]["result"] == []


def test_bearer_auth(cloudflare: CloudflareFixture) -> None:
    anonymous = requests.get(cloudflare.url + "/zones", timeout=5)
    body = anonymous.json()
    assert (anonymous.status_code, codes(body), body["success"], body["result"]) == (401, [10000], False, None)
    status, body = call(cloudflare, "GET", "/zones", headers={"Authorization": "Token abc"})
    assert status == 400 and codes(body) == [6003]
    assert body["errors"][0]["error_chain"] == [{"code": 6111, "message": "Invalid format for Authorization header"}]
    status, body = call(cloudflare, "GET", records(cloudflare), token="not-a-token")
    assert (status, codes(body), body["errors"][0]["message"]) == (403, [10000], "Authentication error")
    # A read-only token reads but cannot write; a token for another zone cannot read this one.
    cloudflare.fake.state.add_token("reader", write=False)
    assert call(cloudflare, "GET", records(cloudflare), token="reader")[0] == 200
    status, body = call(cloudflare, "POST", records(cloudflare), token="reader",
                        json={"type": "A", "name": "x", "content": "192.0.2.1"})
    assert (status, codes(body)) == (403, [10000])
    other = cloudflare.fake.state.zone_named("other.test")
    cloudflare.fake.state.add_token("other-only", zones=[other])
    assert call(cloudflare, "GET", records(cloudflare), token="other-only")[0] == 403
    assert call(cloudflare, "GET", "/zones", token="other-only")[1]["result"][0]["id"] == other
    assert call(cloudflare, "GET", "/user/tokens/verify")[1]["result"]["status"] == "active"


def test_create_get_update_delete(cloudflare: CloudflareFixture) -> None:
    status, body = call(cloudflare, "POST", records(cloudflare),
                        json={"type": "A", "name": "App", "content": "192.0.2.10", "ttl": 300, "comment": "mine"})
    assert status == 200, body
    record = body["result"]
    assert len(record["id"]) == 32 and record["zone_id"] == cloudflare.zone_id
    assert (record["name"], record["content"], record["ttl"], record["proxied"], record["comment"]) == (
        "app.buddo.test", "192.0.2.10", 300, False, "mine")
    assert record["proxiable"] is True and record["zone_name"] == "buddo.test"
    path = f"{records(cloudflare)}/{record['id']}"
    assert call(cloudflare, "GET", path)[1]["result"]["content"] == "192.0.2.10"
    status, body = call(cloudflare, "PATCH", path, json={"content": "192.0.2.11"})
    assert status == 200 and body["result"]["content"] == "192.0.2.11" and body["result"]["ttl"] == 300
    status, body = call(cloudflare, "PUT", path, json={"type": "A", "name": "app.buddo.test",
                                                       "content": "192.0.2.12", "proxied": True, "ttl": 600})
    assert body["result"]["ttl"] == 1 and body["result"]["proxied"] is True  # proxied: automatic TTL
    assert body["result"]["comment"] is None  # PUT replaces the whole record
    status, body = call(cloudflare, "DELETE", path)
    assert (status, body["result"]) == (200, {"id": record["id"]})
    status, body = call(cloudflare, "GET", path)
    assert (status, codes(body), body["errors"][0]["message"]) == (404, [81044], "Record does not exist.")
    assert call(cloudflare, "DELETE", path)[0] == 404
    assert call(cloudflare, "PATCH", path, json={"content": "192.0.2.1"})[0] == 404


def test_names_are_relative_to_the_zone(cloudflare: CloudflareFixture) -> None:
    made = [call(cloudflare, "POST", records(cloudflare), json={"type": "A", "name": n, "content": "192.0.2.1"})
            for n in ("@", "www.buddo.test.", "foo.example.org", "*.apps")]
    assert [m[1]["result"]["name"] for m in made] == [
        "buddo.test", "www.buddo.test", "foo.example.org.buddo.test", "*.apps.buddo.test"]


def test_duplicates_and_conflicts(cloudflare: CloudflareFixture) -> None:
    base = {"type": "A", "name": "dup", "content": "192.0.2.1", "ttl": 120}
    assert call(cloudflare, "POST", records(cloudflare), json=base)[0] == 200
    status, body = call(cloudflare, "POST", records(cloudflare), json=base)
    assert (status, body["errors"]) == (400, [{"code": 81058, "message": "An identical record already exists."}])
    status, body = call(cloudflare, "POST", records(cloudflare), json={**base, "ttl": 300})
    assert (status, body["errors"]) == (400, [{"code": 81057, "message": "Record already exists."}])
    # Another address under the same name is a second record (round robin), as on Cloudflare.
    assert call(cloudflare, "POST", records(cloudflare), json={**base, "content": "192.0.2.2"})[0] == 200
    assert codes(call(cloudflare, "POST", records(cloudflare),
                      json={"type": "CNAME", "name": "dup", "content": "x.example.com"})[1]) == [81053]
    call(cloudflare, "POST", records(cloudflare), json={"type": "CNAME", "name": "alias", "content": "x.example.com"})
    assert codes(call(cloudflare, "POST", records(cloudflare),
                      json={"type": "AAAA", "name": "alias", "content": "2001:db8::1"})[1]) == [81054]
    # An update into an existing record's place is refused the same way.
    second = next(r for r in cloudflare.records() if r["content"] == "192.0.2.2")
    status, body = call(cloudflare, "PATCH", f"{records(cloudflare)}/{second['id']}", json={"content": "192.0.2.1"})
    assert codes(body) == [81058]


def test_invalid_input_is_4xx_with_the_api_codes(cloudflare: CloudflareFixture) -> None:
    cases = [
        ({"type": "A", "name": "a", "content": "2001:db8::1"}, [9005]),
        ({"type": "A", "name": "a", "content": "192.0.2.300"}, [9005]),
        ({"type": "AAAA", "name": "a", "content": "192.0.2.1"}, [9006]),
        ({"type": "BOGUS", "name": "a", "content": "x"}, [1004]),
        ({"type": "A", "name": "bad name!", "content": "192.0.2.1"}, [9000]),
        ({"type": "A", "name": "a." + "x" * 64, "content": "192.0.2.1"}, [9000]),
        ({"type": "A", "name": "", "content": "192.0.2.1"}, [9000]),
        ({"type": "A", "name": "a", "content": "192.0.2.1", "ttl": 30}, [1004]),
        ({"type": "A", "name": "a", "content": "192.0.2.1", "ttl": "300"}, [1004]),
        ({"type": "TXT", "name": "a", "content": "hello", "proxied": True}, [1004]),
        ({"type": "CNAME", "name": "self", "content": "self.buddo.test"}, [9039]),
        ({"type": "CNAME", "name": "c", "content": "not a host"}, [1004]),
    ]
    for body, expected in cases:
        status, answer = call(cloudflare, "POST", records(cloudflare), json=body)
        assert (status, codes(answer), answer["success"]) == (400, expected, False), body
    status, answer = call(cloudflare, "POST", records(cloudflare), json={"type": "A", "name": "a", "content": "1.1.1.1",
                                                                       "ttl": 30})
    assert answer["errors"][0]["error_chain"][0]["code"] == 9021
    status, answer = call(cloudflare, "POST", records(cloudflare), data="[1]")
    assert (status, codes(answer)) == (400, [9207])
    assert cloudflare.records() == []


def test_unknown_zone_route_and_method(cloudflare: CloudflareFixture) -> None:
    status, body = call(cloudflare, "GET", "/zones/0123456789abcdef0123456789abcdef/dns_records")
    assert status == 400 and codes(body) == [7003, 7000]
    assert body["errors"][0]["message"] == ("Could not route to /client/v4/zones/0123456789abcdef0123456789abcdef/"
                                            "dns_records, perhaps your object identifier is invalid?")
    assert codes(call(cloudflare, "GET", "/nothing/here")[1]) == [7000]
    status, body = call(cloudflare, "DELETE", records(cloudflare))
    assert (status, codes(body)) == (405, [7001])


def test_list_filters_and_pagination(cloudflare: CloudflareFixture) -> None:
    for i in range(12):
        cloudflare.fake.state.put_record(cloudflare.zone_id, type="A", name=f"n{i:02d}", content=f"192.0.2.{i}",
                                         comment=f"Buddo-Deploy x {i}" if i % 2 else None)
    cloudflare.fake.state.put_record(cloudflare.zone_id, type="AAAA", name="n00", content="2001:db8::1")
    status, body = call(cloudflare, "GET", records(cloudflare), params={"type": "A", "per_page": 5, "page": 3})
    assert [r["name"] for r in body["result"]] == ["n10.buddo.test", "n11.buddo.test"]
    assert body["result_info"] == {"page": 3, "per_page": 5, "count": 2, "total_count": 12, "total_pages": 3}
    body = call(cloudflare, "GET", records(cloudflare), params={"page": 9, "per_page": 5})[1]
    assert body["result"] == [] and body["result_info"]["total_pages"] == 3
    assert call(cloudflare, "GET", records(cloudflare))[1]["result_info"]["per_page"] == 100
    # Comment filters are case-insensitive, as the API documents.
    body = call(cloudflare, "GET", records(cloudflare), params={"comment.startswith": "buddo-deploy x"})[1]
    assert body["result_info"]["total_count"] == 6
    assert call(cloudflare, "GET", records(cloudflare), params={"comment.absent": ""})[1][
        "result_info"]["total_count"] == 7
    body = call(cloudflare, "GET", records(cloudflare), params={"name": "n00.buddo.test"})[1]
    assert sorted(r["type"] for r in body["result"]) == ["A", "AAAA"]
    body = call(cloudflare, "GET", records(cloudflare), params={"name": "n00.buddo.test", "type": "AAAA"})[1]
    assert [r["content"] for r in body["result"]] == ["2001:db8::1"]
    body = call(cloudflare, "GET", records(cloudflare), params={"content": "192.0.2.3", "match": "all"})[1]
    assert [r["name"] for r in body["result"]] == ["n03.buddo.test"]
    body = call(cloudflare, "GET", records(cloudflare), params={"content": "192.0.2.3", "name": "n04.buddo.test",
                                                                "match": "any"})[1]
    assert sorted(r["name"] for r in body["result"]) == ["n03.buddo.test", "n04.buddo.test"]
    assert call(cloudflare, "GET", records(cloudflare), params={"name": "none.buddo.test"})[1]["result_info"] == {
        "page": 1, "per_page": 100, "count": 0, "total_count": 0, "total_pages": 1}


def test_runs_by_hand(tmp_path: Any) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.cloudflare", "--port", str(port), "--zone",
                             "hand.test", "--token", "t0k"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("zone hand.test: ") and f"127.0.0.1:{port}/client/v4" in lines[1]
        for _ in range(50):
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/client/v4/zones", params={"name": "hand.test"},
                                      headers={"Authorization": "Bearer t0k"}, timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert answer.json()["result"][0]["id"] == lines[0].split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
