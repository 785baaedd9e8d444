"""GET /api/deploy/apps/{id}/logs pages like GET /apps: limit, cursor, next_cursor; oldest first."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import peewee
import pytest
from buddo_deploy.db import write_transaction
from buddo_deploy.models import AuditEntry, Deployment, database_proxy, utcnow
from buddo_deploy.schemas import LogList
from buddo_deploy.services import state

from tests.helpers import auth, create_deployment


def _add_entries(ident: str, count: int, *, at: dt.datetime | None = None) -> None:
    """Audit entries, all at one instant when ``at`` is given (the id then orders them)."""
    d = Deployment.get_by_id(ident)
    with write_transaction(database_proxy.obj):
        for i in range(count):
            entry = state.audit(d, "restart", "completed", "someone", details={"n": i})
            if at is not None:
                AuditEntry.update(inserted_at=at).where(AuditEntry.id == entry.id).execute()


def _page(client, ident: str, **params: object) -> dict:
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/logs", params=params, headers=auth())
    assert resp.status_code == 200, resp.text
    LogList.model_validate(resp.json)
    return dict(resp.json)


def _chronological(ident: str) -> list[str]:
    return [str(e.id) for e in AuditEntry.select().where(AuditEntry.deployment == ident)
            .order_by(AuditEntry.inserted_at, AuditEntry.id)]


def test_pages_walk_every_entry_exactly_once_oldest_first(client):
    ident = create_deployment(client)  # create + deploy
    _add_entries(ident, 20)
    _add_entries(ident, 12, at=utcnow().replace(microsecond=0) + dt.timedelta(seconds=5))  # one instant
    _add_entries(ident, 9)
    expected = _chronological(ident)
    assert len(expected) == 43

    first = _page(client, ident)
    assert len(first["logs"]) == 20 and first["next_cursor"]  # the default limit, as GET /apps
    seen, cursor, sizes = [], None, []
    while True:
        page = _page(client, ident, limit=7, **({"cursor": cursor} if cursor else {}))
        sizes.append(len(page["logs"]))
        seen += [entry["id"] for entry in page["logs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if len(seen) == 21:  # a request lands mid-walk: it is newer, so it comes at the end
            _add_entries(ident, 1)
            expected = _chronological(ident)
    assert seen == expected and len(set(seen)) == 44
    assert sizes == [7] * 6 + [2]
    times = [entry["inserted_at"] for entry in _page(client, ident, limit=100)["logs"]]
    assert times == sorted(times)


def test_the_last_page_has_no_cursor_and_a_full_one_says_so(client):
    ident = create_deployment(client)
    assert _page(client, ident, limit=2)["next_cursor"] is None  # exactly two: create, deploy
    page = _page(client, ident, limit=1)
    assert [e["action"] for e in page["logs"]] == ["create"] and page["next_cursor"]
    rest = _page(client, ident, limit=1, cursor=page["next_cursor"])
    assert [e["action"] for e in rest["logs"]] == ["deploy"] and rest["next_cursor"] is None


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(("params", "code"), [
    ({"limit": "0"}, "validation_failed"), ({"limit": "101"}, "validation_failed"),
    ({"limit": "x"}, "validation_failed"),
    ({"limit": "\u00b2"}, "validation_failed"), ({"limit": "\u0661"}, "validation_failed"),
    ({"limit": ""}, "validation_failed"), ({"limit": "-1"}, "validation_failed"),
    ({"cursor": "garbage!"}, "validation_failed"), ({"cursor": "a\x00"}, "validation_failed"),
    ({"cursor": "\u00e9t\u00e9"}, "validation_failed"), ({"cursor": "x" * 201}, "validation_failed"),
    ({"cursor": _cursor(["2026-01-01T00:00:00", 5])}, "invalid_cursor"),
    ({"cursor": _cursor([1, 2])}, "invalid_cursor"),
    ({"cursor": _cursor({"a": 1, "b": 2})}, "invalid_cursor"), ({"cursor": _cursor("ab")}, "invalid_cursor"),
    ({"cursor": _cursor(["2026-01-01T00:00:00", "not-a-uuid"])}, "invalid_cursor"),
    ({"cursor": _cursor(["yesterday", "00000000-0000-0000-0000-000000000000"])}, "invalid_cursor"),
    ({"cursor": "AAAA"}, "invalid_cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"[" * 140).decode().rstrip("=")}, "invalid_cursor"),
])
def test_bad_limit_or_cursor_is_422_as_on_the_list(client, params, code):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/logs", params=params, headers=auth())
    assert resp.status_code == 422, resp.text
    error = resp.json["error"]
    assert error["code"] == code and error["details"][0]["field"] == next(iter(params))
    same = client.simulate_get("/api/deploy/apps", params=params, headers=auth())
    assert (same.status_code, same.json["error"]["code"]) == (422, code)  # the very same rules


@pytest.mark.parametrize("position", ["0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "2026-01-01T00:00:00+05:00",
                                      "2026-01-01T00:00:00-12:00"])
def test_any_cursor_that_decodes_is_a_position_never_a_500(client, position):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/logs", headers=auth(),
                               params={"cursor": _cursor([position, "ffffffff-ffff-ffff-ffff-ffffffffffff"])})
    assert resp.status_code == 200, resp.text


def test_another_operators_log_is_403_and_the_openapi_document_says_how_it_pages(client):
    ident = create_deployment(client)
    resp = client.simulate_get(f"/api/deploy/apps/{ident}/logs", params={"limit": 1}, headers=auth("someone-else"))
    assert resp.status_code == 403
    document = client.simulate_get("/api/deploy/openapi.json").json
    get = document["paths"]["/api/deploy/apps/{deployment_id}/logs"]["get"]
    params = {p["name"]: p["schema"] for p in get["parameters"]}
    listing = {p["name"]: p["schema"] for p in document["paths"]["/api/deploy/apps"]["get"]["parameters"]}
    assert params == {"limit": listing["limit"], "cursor": listing["cursor"]}
    assert "422" in get["responses"]
    assert set(document["components"]["schemas"]["LogList"]["required"]) == {"logs", "next_cursor"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_page_after_a_cursor_seeks_the_index(client, settings):
    """SQLite's plan for the next page of the deploy log and of GET /apps: a seek on the listing
    index by the row value, not a scan filtered by an OR."""
    from buddo_deploy.models import AuditEntry, Deployment, database_proxy, utcnow

    db = database_proxy.obj
    now = utcnow()
    for model, where, order, name in (
        (AuditEntry, AuditEntry.deployment == uuid.uuid4(), (AuditEntry.inserted_at, AuditEntry.id),
         "audit_entries_deployment_listing"),
        (Deployment, Deployment.operator_id == "o", (Deployment.inserted_at, Deployment.id),
         "deployments_operator_listing"),
    ):
        after = peewee.Tuple(now, str(uuid.uuid4()))
        query = model.select().where(where & (peewee.Tuple(*order) > after)).order_by(*order)
        sql, params = query.sql()
        plan = " ".join(str(row[-1]) for row in db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall())
        assert f"USING INDEX {name}" in plan and "(inserted_at,id)>(?,?)" in plan.replace(" ", ""), plan
