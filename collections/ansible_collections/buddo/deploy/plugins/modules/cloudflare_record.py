#!/usr/bin/python
"""One DNS record on Cloudflare, created, updated or deleted idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
module: cloudflare_record
short_description: Manage one A, AAAA or CNAME record of a Cloudflare zone
description:
  - Makes the record O(type) O(name) in O(zone) exist with O(content), O(ttl) and
    O(proxied), or not exist, through Cloudflare's v4 API at O(api_url) (so tests can
    point it at a local fake; community.general's module hard-codes the API host).
  - "With O(comment) set, the record is the one of that type and name carrying exactly
    that comment (a marker naming who manages it): other records of the name are left
    alone, and duplicates carrying the marker are removed. Without it, every record of
    the type and name is the record."
  - Check mode and diff supported. Runs where the API is reachable; the roles delegate
    it to the controller.
options:
  api_url: {description: "Base URL of the v4 API.", type: str, default: "https://api.cloudflare.com/client/v4"}
  api_token: {description: "API token (DNS edit on the zone).", type: str, required: true}
  zone: {description: "The zone, by name or by id (32 hex digits).", type: str, required: true}
  type: {description: Record type., type: str, required: true, choices: [A, AAAA, CNAME]}
  name: {description: "Record name, fully qualified or relative to the zone (@ is the apex).", type: str,
      required: true}
  content: {description: "IPv4 address (A), IPv6 address (AAAA) or host name (CNAME). Required when present.",
      type: str}
  ttl: {description: "TTL in seconds, 1 for automatic.", type: int, default: 1}
  proxied: {description: "Proxy through Cloudflare.", type: bool, default: false}
  comment: {description: "The marker comment that identifies the record (see above).", type: str}
  exclusive: {description: "Fail when the name has a record of the type that is not this one (a name someone else
      uses).", type: bool, default: false}
  state: {description: Whether the record exists., type: str, choices: [present, absent], default: present}
  per_page: {description: "Records per page when listing.", type: int, default: 100}
  timeout: {description: "Seconds one API call may take.", type: float, default: 30}
requirements: [requests]
"""

EXAMPLES = r"""
- name: Point my-app at this host
  buddo.deploy.cloudflare_record:
    api_url: https://api.cloudflare.com/client/v4
    api_token: "{{ cloudflare_token }}"
    zone: buddocloud.com
    type: A
    name: my-app.buddocloud.com
    content: 203.0.113.10
    comment: buddo-deploy buddo container-host-1 550e8400-e29b-41d4-a716-446655440000
  delegate_to: localhost
"""

RETURN = r"""
record: {description: "The record after the run (id, type, name, content, ttl, proxied, comment); null when absent.",
    type: dict, returned: always}
action: {description: "created, updated, deleted or none.", type: str, returned: always}
deleted: {description: Ids of the records removed (or that would be)., type: list, returned: always}
zone: {description: "The zone (id, name).", type: dict, returned: always}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.buddo.deploy.plugins.module_utils.cloudflare import (
    CONNECTION_ARGS,
    Cloudflare,
    CloudflareError,
    fields,
    fqdn,
    requests,
)


def _want(params: dict[str, Any], name: str) -> dict[str, Any]:
    content = params["content"]
    if params["type"] == "CNAME":
        content = content.rstrip(".").lower()
    return {"type": params["type"], "name": name, "content": content,
            "ttl": 1 if params["proxied"] else params["ttl"], "proxied": params["proxied"],
            "comment": params["comment"]}


def _differs(record: dict[str, Any], want: dict[str, Any]) -> list[str]:
    return [k for k in ("content", "ttl", "proxied") if record.get(k) != want[k]]


def converge(module: AnsibleModule, api: Cloudflare) -> dict[str, Any]:
    params = module.params
    zone = api.zone(params["zone"])
    name = fqdn(params["name"], zone["name"])
    found, _ = api.records(zone["id"], params["per_page"], type=params["type"], name=name)
    found = [r for r in found if r.get("name") == name]
    mine = [r for r in found if params["comment"] is None or r.get("comment") == params["comment"]]
    others = [r for r in found if r not in mine]
    result: dict[str, Any] = {"changed": False, "action": "none", "record": None, "deleted": [], "zone": zone,
                              "diff": {"before": {"records": [fields(r) for r in mine]}}}
    base = f"/zones/{zone['id']}/dns_records"

    if params["state"] == "absent":
        for record in mine:
            if not module.check_mode:
                api.call("DELETE", f"{base}/{record['id']}")
            result["deleted"].append(record["id"])
        result.update(changed=bool(mine), action="deleted" if mine else "none")
        result["diff"]["after"] = {"records": []}
        return result

    if params["content"] is None:
        module.fail_json(msg="content is required when state is present")
    want = _want(params, name)
    if params["exclusive"] and others:
        listed = ", ".join(f"{r.get('content')} (comment: {r.get('comment') or 'none'})" for r in others)
        module.fail_json(msg=f"{name} already has a {params['type']} record that is not this one: {listed}; "
                             "remove it, or it would answer beside this one", zone=zone)
    # Keep the record that is already right (or the oldest), remove duplicates of it.
    mine.sort(key=lambda r: (bool(_differs(r, want)), str(r.get("created_on") or "")))
    keep, extra = (mine[0], mine[1:]) if mine else (None, [])
    for record in extra:
        if not module.check_mode:
            api.call("DELETE", f"{base}/{record['id']}")
        result["deleted"].append(record["id"])
    if keep is None:
        result["action"] = "created"
        record = want if module.check_mode else api.call("POST", base, body=_body(want))["result"]
    elif _differs(keep, want):
        result["action"] = "updated"
        record = {**keep, **want} if module.check_mode else api.call(
            "PATCH", f"{base}/{keep['id']}", body=_body(want))["result"]
    else:
        record = keep
    result["changed"] = result["action"] != "none" or bool(extra)
    result["record"] = {"id": record.get("id"), **fields(record)}
    result["diff"]["after"] = {"records": [fields(record)]}
    return result


def _body(want: dict[str, Any]) -> dict[str, Any]:
    body = dict(want)
    if body["comment"] is None:
        del body["comment"]  # leave a comment someone else wrote alone
    return body


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **CONNECTION_ARGS,
            "type": {"type": "str", "required": True, "choices": ["A", "AAAA", "CNAME"]},
            "name": {"type": "str", "required": True},
            "content": {"type": "str"},
            "ttl": {"type": "int", "default": 1},
            "proxied": {"type": "bool", "default": False},
            "comment": {"type": "str"},
            "exclusive": {"type": "bool", "default": False},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "per_page": {"type": "int", "default": 100},
            "timeout": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    if requests is None:
        module.fail_json(msg=missing_required_lib("requests"))
    params = module.params
    api = Cloudflare(params["api_url"], params["api_token"], params["timeout"])
    label = f"{params['type']} {params['name']}"
    try:
        result = converge(module, api)
    except CloudflareError as exc:
        module.fail_json(msg=f"DNS record {label}: {exc}", status=exc.status, codes=list(exc.codes))
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
