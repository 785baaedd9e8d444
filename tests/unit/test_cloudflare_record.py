"""buddo.deploy.cloudflare_record and cloudflare_record_info against the Cloudflare fake.

Each module runs as Ansible runs it: its own Python process, arguments in a JSON
file, the result as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fakes.fixtures import CloudflareFixture

COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"
MODULES = COLLECTIONS / "ansible_collections" / "buddo" / "deploy" / "plugins" / "modules"
MARK = "buddo-deploy buddo container-host-1 11111111-2222-3333-4444-555555555555"


def run(cf: CloudflareFixture, tmp_path: Path, module: str = "cloudflare_record", *, check: bool = False,
        diff: bool = True, **args: Any) -> dict[str, Any]:
    params = {"api_url": cf.url, "api_token": cf.token, "zone": cf.zone, **args,
              "_ansible_check_mode": check, "_ansible_diff": diff}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    proc = subprocess.run([sys.executable, str(MODULES / f"{module}.py"), str(args_file)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(COLLECTIONS)})
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def record(**over: Any) -> dict[str, Any]:
    return {"type": "A", "name": "my-app.buddo.test", "content": "192.0.2.10", "comment": MARK, **over}


def writes(cf: CloudflareFixture) -> list[str]:
    return [m for m, _, _ in cf.fake.state.requests if m != "GET"]


def test_create_then_nothing_then_update_then_delete(cloudflare: CloudflareFixture, tmp_path: Path) -> None:
    created = run(cloudflare, tmp_path, **record())
    assert created["changed"] and created["action"] == "created", created
    assert created["record"]["name"] == "my-app.buddo.test" and created["record"]["comment"] == MARK
    assert created["diff"] == {"before": {"records": []}, "after": {"records": [
        {"type": "A", "name": "my-app.buddo.test", "content": "192.0.2.10", "ttl": 1, "proxied": False,
         "comment": MARK}]}}
    [stored] = cloudflare.records()
    assert (stored["content"], stored["comment"], stored["ttl"], stored["proxied"]) == ("192.0.2.10", MARK, 1, False)

    cloudflare.fake.state.requests.clear()
    again = run(cloudflare, tmp_path, **record(name="my-app"))  # relative to the zone: the same record
    assert not again["changed"] and again["action"] == "none" and again["record"]["id"] == stored["id"]
    assert writes(cloudflare) == []

    moved = run(cloudflare, tmp_path, **record(content="192.0.2.20", ttl=300))
    assert moved["changed"] and moved["action"] == "updated" and moved["record"]["id"] == stored["id"]
    assert moved["diff"]["before"]["records"][0]["content"] == "192.0.2.10"
    assert moved["diff"]["after"]["records"][0]["content"] == "192.0.2.20"
    assert [(r["content"], r["ttl"]) for r in cloudflare.records()] == [("192.0.2.20", 300)]

    gone = run(cloudflare, tmp_path, **record(state="absent"))
    assert gone["changed"] and gone["action"] == "deleted" and gone["deleted"] == [stored["id"]]
    assert gone["diff"]["after"] == {"records": []}
    assert cloudflare.records() == []
    assert not run(cloudflare, tmp_path, **record(state="absent"))["changed"]


def test_check_mode_reports_and_changes_nothing(cloudflare: CloudflareFixture, tmp_path: Path) -> None:
    dry = run(cloudflare, tmp_path, check=True, **record())
    assert dry["changed"] and dry["action"] == "created" and cloudflare.records() == []
    run(cloudflare, tmp_path, **record())
    cloudflare.fake.state.requests.clear()
    dry = run(cloudflare, tmp_path, check=True, **record(content="192.0.2.99"))
    assert dry["changed"] and dry["action"] == "updated"
    assert dry["diff"]["after"]["records"][0]["content"] == "192.0.2.99"
    dry = run(cloudflare, tmp_path, check=True, **record(state="absent"))
    assert dry["changed"] and dry["action"] == "deleted"
    assert writes(cloudflare) == [] and [r["content"] for r in cloudflare.records()] == ["192.0.2.10"]
    assert "diff" not in run(cloudflare, tmp_path, diff=False, **record())


def test_the_marker_decides_which_record_is_ours(cloudflare: CloudflareFixture, tmp_path: Path) -> None:
    state = cloudflare.fake.state
    foreign = state.put_record(cloudflare.zone_id, type="A", name="my-app", content="198.51.100.1", comment="by hand")
    # Not exclusive (a wildcard shared by hosts): ours is added beside, the other one stays.
    run(cloudflare, tmp_path, **record())
    assert sorted(r["content"] for r in cloudflare.records()) == ["192.0.2.10", "198.51.100.1"]
    run(cloudflare, tmp_path, **record(state="absent"))
    assert [r["id"] for r in cloudflare.records()] == [foreign["id"]]
    # Exclusive (a deployment's own name): a record someone else made is a clear failure.
    failed = run(cloudflare, tmp_path, **record(exclusive=True))
    assert failed["failed"] and "198.51.100.1 (comment: by hand)" in failed["msg"], failed
    assert [r["id"] for r in cloudflare.records()] == [foreign["id"]]
    # Duplicates carrying our marker are folded into one; the right one is kept.
    state.put_record(cloudflare.zone_id, type="A", name="dup", content="192.0.2.1", comment=MARK)
    right = state.put_record(cloudflare.zone_id, type="A", name="dup", content="192.0.2.10", comment=MARK)
    folded = run(cloudflare, tmp_path, **record(name="dup"))
    assert folded["changed"] and folded["action"] == "none" and folded["record"]["id"] == right["id"]
    assert [r["id"] for r in cloudflare.records() if r["name"] == "dup.buddo.test"] == [right["id"]]


def test_api_errors_fail_with_their_codes(cloudflare: CloudflareFixture, tmp_path: Path) -> None:
    bad = run(cloudflare, tmp_path, **record(content="2001:db8::1"))
    assert bad["failed"] and bad["codes"] == [9005] and bad["status"] == 400
    assert bad["msg"] == ("DNS record A my-app.buddo.test: Cloudflare API POST /zones/"
                          f"{cloudflare.zone_id}/dns_records failed (HTTP 400): 9005 Content for A record must be "
                          "a valid IPv4 address.")
    ttl = run(cloudflare, tmp_path, **record(ttl=5))
    assert ttl["codes"] == [1004, 9021] and "(9021 Invalid TTL." in ttl["msg"]
    cloudflare.fake.state.put_record(cloudflare.zone_id, type="CNAME", name="alias", content="elsewhere.example")
    assert run(cloudflare, tmp_path, **record(name="alias"))["codes"] == [81054]

    denied = run(cloudflare, tmp_path, **record(api_token="wrong-token"))
    assert denied["failed"] and denied["codes"] == [10000] and denied["status"] == 403
    assert "wrong-token" not in json.dumps(denied)
    assert run(cloudflare, tmp_path, **record(zone="0123456789abcdef0123456789abcdef"))["codes"] == [7003, 7000]
    missing = run(cloudflare, tmp_path, **record(zone="nowhere.test"))
    assert missing["msg"] == ("DNS record A my-app.buddo.test: Cloudflare zone nowhere.test not found "
                              "(or the token may not read it)")
    down = run(cloudflare, tmp_path, **record(api_url="http://127.0.0.1:9/client/v4"))
    assert down["failed"] and "could not be reached" in down["msg"] and "ConnectionError" in down["msg"]
    assert run(cloudflare, tmp_path, type="A", name="x")["msg"] == "content is required when state is present"


def test_zone_by_id_and_cname(cloudflare: CloudflareFixture, tmp_path: Path) -> None:
    made = run(cloudflare, tmp_path, zone=cloudflare.zone_id, type="CNAME", name="www",
               content="Apps.Example.com.")
    assert made["record"]["content"] == "apps.example.com" and made["zone"]["name"] == "buddo.test"
    assert not run(cloudflare, tmp_path, type="CNAME", name="www.buddo.test", content="apps.example.com")["changed"]


def test_info_reads_every_page_and_filters_the_marker_exactly(cloudflare: CloudflareFixture, tmp_path: Path) -> None:
    state = cloudflare.fake.state
    prefix = "buddo-deploy buddo container-host-1 "
    for i in range(12):
        state.put_record(cloudflare.zone_id, type="A", name=f"app{i}", content="192.0.2.1", comment=f"{prefix}{i}")
    state.put_record(cloudflare.zone_id, type="A", name="loud", content="192.0.2.1", comment=f"{prefix.upper()}x")
    state.put_record(cloudflare.zone_id, type="A", name="other-host", content="192.0.2.1",
                     comment="buddo-deploy buddo container-host-2 x")
    state.put_record(cloudflare.zone_id, type="A", name="plain", content="192.0.2.1")
    found = run(cloudflare, tmp_path, "cloudflare_record_info", comment_startswith=prefix, per_page=5)
    assert not found["changed"] and found["pages"] == 3, found
    assert sorted(r["name"] for r in found["records"]) == sorted(f"app{i}.buddo.test" for i in range(12))
    assert set(found["records"][0]) == {"id", "type", "name", "content", "ttl", "proxied", "comment"}
    assert found["zone"] == {"id": cloudflare.zone_id, "name": "buddo.test"}
    assert len(run(cloudflare, tmp_path, "cloudflare_record_info", per_page=5)["records"]) == 15
    named = run(cloudflare, tmp_path, "cloudflare_record_info", name="plain", type="A")
    assert [r["name"] for r in named["records"]] == ["plain.buddo.test"]
    # Pagination in the record module too: 7 records of one name, 5 a page.
    for i in range(7):
        state.put_record(cloudflare.zone_id, type="A", name="rr", content=f"198.51.100.{i}", comment=MARK)
    folded = run(cloudflare, tmp_path, **record(name="rr", content="198.51.100.6", per_page=5))
    assert len(folded["deleted"]) == 6 and folded["action"] == "none"
    assert [r["content"] for r in cloudflare.records() if r["name"] == "rr.buddo.test"] == ["198.51.100.6"]
    denied = run(cloudflare, tmp_path, "cloudflare_record_info", api_token="nope")
    assert denied["failed"] and denied["codes"] == [10000]
