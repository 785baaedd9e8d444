"""The env (or registry logins) of the deployments a converge acts on, and no other's."""

from __future__ import annotations

from typing import Any

DOCUMENTATION = r"""
name: converge_env
short_description: Keep the secrets of the listed deployments only
description:
  - Keeps the env (or registry login) of the listed deployments only, so no other
    deployment's secrets travel to the host (M(buddo.deploy.converge) takes it).
positional: items
options:
  _input: {description: "Deployment id -> env mapping (or registry login).", type: dict, required: true}
  items: {description: "Desired deployment items (their id).", type: list, required: true}
"""

RETURN = r"""
_value: {description: "Deployment id -> env, for the listed deployments only.", type: dict}
"""


def converge_env(env: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Deployment id -> env (or registry login), for the listed deployments only."""
    wanted = {str(item["id"]) for item in items}
    return {str(ident): values for ident, values in (env or {}).items() if str(ident) in wanted}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"converge_env": converge_env}
