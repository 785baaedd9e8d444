#!/usr/bin/python
"""The DNS records of a Cloudflare zone, filtered (e.g. by the marker comment of the records we manage)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: cloudflare_record_info
short_description: List DNS records of a Cloudflare zone
description:
  - Reads every page of the zone's records matching the filters through Cloudflare's
    v4 API at O(api_url). Changes nothing.
  - O(comment_startswith) is sent as the API's C(comment.startswith) filter, which is
    case-insensitive, and applied again here case-sensitively, so only records whose
    comment starts with exactly that text are returned.
options:
  api_url: {description: "Base URL of the v4 API.", type: str, default: "https://api.cloudflare.com/client/v4"}
  api_token: {description: "API token (DNS read on the zone).", type: str, required: true}
  zone: {description: "The zone, by name or by id (32 hex digits).", type: str, required: true}
  type: {description: Only records of this type., type: str}
  name: {description: "Only records of this name (fully qualified or relative to the zone).", type: str}
  comment_startswith: {description: Only records whose comment starts with this text., type: str}
  per_page: {description: Records per page., type: int, default: 100}
  timeout: {description: "Seconds one API call may take.", type: float, default: 30}
requirements: [requests]
"""

EXAMPLES = r"""
- name: The records this platform manages for container-host-1
  buddo.deploy.cloudflare_record_info:
    api_token: "{{ cloudflare_token }}"
    zone: buddocloud.com
    comment_startswith: "buddo-deploy buddo container-host-1 "
  delegate_to: localhost
  register: managed
"""

RETURN = r"""
records: {description: "The records (id, type, name, content, ttl, proxied, comment).", type: list, elements: dict,
    returned: success}
zone: {description: "The zone (id, name).", type: dict, returned: success}
pages: {description: Pages read., type: int, returned: success}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.buddo.deploy.plugins.module_utils.cloudflare import (
    CONNECTION_ARGS,
    Cloudflare,
    CloudflareError,
    fields,
    fqdn,
    requests,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **CONNECTION_ARGS,
            "type": {"type": "str"},
            "name": {"type": "str"},
            "comment_startswith": {"type": "str"},
            "per_page": {"type": "int", "default": 100},
            "timeout": {"type": "float", "default": 30},
        },
        supports_check_mode=True,  # only reads
    )
    if requests is None:
        module.fail_json(msg=missing_required_lib("requests"))
    params = module.params
    api = Cloudflare(params["api_url"], params["api_token"], params["timeout"])
    prefix = params["comment_startswith"]
    try:
        zone = api.zone(params["zone"])
        name = fqdn(params["name"], zone["name"]) if params["name"] else None
        found, pages = api.records(zone["id"], params["per_page"], type=params["type"], name=name,
                                   **{"comment.startswith": prefix})
    except CloudflareError as exc:
        module.fail_json(msg=f"DNS records of {params['zone']}: {exc}", status=exc.status, codes=list(exc.codes))
    records = [{"id": r.get("id"), **fields(r)} for r in found
               if prefix is None or str(r.get("comment") or "").startswith(prefix)]
    module.exit_json(changed=False, records=records, zone=zone, pages=pages)


if __name__ == "__main__":
    main()
