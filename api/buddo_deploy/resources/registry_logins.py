"""The caller's registry logins: GET the list, PUT or DELETE one by registry host."""

from __future__ import annotations

from typing import Any

import falcon
from pydantic import ValidationError

from ..schemas import (
    RegistryLoginEnvelope,
    RegistryLoginIn,
    RegistryLoginKey,
    RegistryLoginList,
    RegistryLoginOut,
    RegistryLoginRemoved,
    ValidationContext,
)
from ..services.registry_logins import RegistryLogins
from .common import read_json_object, send, validation_error


class RegistryLoginsResource:
    def __init__(self, logins: RegistryLogins, context: ValidationContext, max_body: int) -> None:
        self.logins = logins
        self.context = context
        self.max_body = max_body

    def _registry(self, registry: str) -> str:
        try:
            return RegistryLoginKey.model_validate({"registry": registry}, context=self.context).registry
        except ValidationError as exc:
            raise validation_error(exc) from exc

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        logins = self.logins.list_logins(req.context.principal.operator_id)
        send(resp, RegistryLoginList(registry_logins=[_out(login) for login in logins]))

    def on_put_item(self, req: falcon.Request, resp: falcon.Response, registry: str) -> None:
        body = read_json_object(req, self.max_body)
        host = self._registry(registry)
        try:
            request = RegistryLoginIn.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        login, created = self.logins.put(req.context.principal.operator_id, host, request.username,
                                         request.password)
        if created:
            resp.location = f"/api/deploy/registry-logins/{host}"
        send(resp, RegistryLoginEnvelope(registry_login=_out(login)), falcon.HTTP_201 if created else falcon.HTTP_200)

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, registry: str) -> None:
        host = self._registry(registry)
        self.logins.remove(req.context.principal.operator_id, host)
        send(resp, RegistryLoginRemoved(message="Registry login removed", registry=host))


def _out(login: Any) -> RegistryLoginOut:
    # The password never leaves: RegistryLoginOut has no field for it.
    return RegistryLoginOut(registry=login.registry, username=login.username, inserted_at=login.inserted_at,
                            updated_at=login.updated_at)
