"""Services raise domain errors; errors.py alone maps each kind to HTTP."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import buddo_deploy
import buddo_deploy.services
import falcon
import falcon.testing
import pytest
from buddo_deploy import domain_errors, errors
from buddo_deploy.domain_errors import DomainError, Invalid, UpstreamFailed

PACKAGE = Path(buddo_deploy.__file__).parent


def _kinds(base: type[DomainError]) -> list[type[DomainError]]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_kinds(sub)]
    return found


def _all_kinds() -> list[type[DomainError]]:
    # Every module that may define its own kind (a service's refinement) is loaded first.
    for module in pkgutil.iter_modules(buddo_deploy.services.__path__):
        importlib.import_module(f"buddo_deploy.services.{module.name}")
    return _kinds(DomainError)


def test_every_kind_of_domain_error_has_exactly_one_http_mapping():
    kinds = _all_kinds()
    assert kinds
    for kind in kinds:
        rows = [k for k in kind.__mro__ if k in errors.HTTP]
        assert len(rows) == 1, f"{kind.__qualname__} maps through {rows}"


def test_the_table_maps_exactly_the_kinds_domain_errors_defines():
    defined = {value for value in vars(domain_errors).values()
               if isinstance(value, type) and issubclass(value, DomainError) and value is not DomainError}
    assert set(errors.HTTP) == defined
    assert all(len(row.code) and row.status[:3].isdigit() for row in errors.HTTP.values())


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", [*sorted((PACKAGE / "services").glob("*.py")), PACKAGE / "domain_errors.py"],
                         ids=lambda p: p.name)
def test_services_and_domain_errors_do_not_import_falcon(path):
    assert not {name for name in _imports_of(path) if name.split(".")[0] == "falcon"}


def _client(error: Exception) -> falcon.testing.TestClient:
    class Raising:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise error

    app = falcon.App()
    errors.install(app)
    app.add_route("/", Raising())
    return falcon.testing.TestClient(app)


def test_a_kind_is_answered_by_its_row_with_the_errors_code_details_and_headers():
    error = UpstreamFailed("the host did not answer", code="output_failed", details={"job_id": 7},
                           headers={"Retry-After": "5"})
    response = _client(error).simulate_get("/")
    assert response.status == "502 Bad Gateway"
    assert response.headers["Retry-After"] == "5"
    assert json.loads(response.text) == {"error": {"code": "output_failed", "message": "the host did not answer",
                                                   "details": {"job_id": 7}, "request_id": None}}


def test_an_error_without_a_code_gets_its_kinds_default():
    response = _client(Invalid.for_field("amount", "must be a positive integer")).simulate_get("/")
    assert response.status == "422 Unprocessable Entity"
    assert json.loads(response.text)["error"] == {
        "code": "validation_failed", "message": "amount: must be a positive integer",
        "details": [{"field": "amount", "message": "must be a positive integer"}], "request_id": None}


def test_a_bare_domain_error_is_a_500_that_says_nothing():
    response = _client(DomainError("no kind chosen")).simulate_get("/")
    assert response.status == "500 Internal Server Error"
    assert json.loads(response.text)["error"]["code"] == "internal_error"
    assert "no kind chosen" not in response.text
