"""Cursors of the lists ordered by (inserted_at, id): opaque to clients, a row value to seek by."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import peewee

from ..domain_errors import Invalid


def encode_cursor(row: Any) -> str:
    """Where a page ended (its last row's inserted_at and id)."""
    raw = json.dumps([row.inserted_at.isoformat(), str(row.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parse_id: Callable[[str], Any] = uuid.UUID) -> tuple[dt.datetime, Any]:
    """The (inserted_at, id) a cursor names; ``parse_id`` raises ValueError for an id of another kind."""
    invalid = Invalid.for_field("cursor", "is not a cursor this API returned", "invalid_cursor")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise invalid from exc
    # Whatever JSON decodes to, only [timestamp string, id string] is a cursor.
    if not (isinstance(decoded, list) and len(decoded) == 2 and all(isinstance(v, str) for v in decoded)):
        raise invalid
    try:
        return dt.datetime.fromisoformat(decoded[0]), parse_id(decoded[1])
    except ValueError as exc:
        raise invalid from exc


def page(query: Any, model: Any, cursor: str | None, limit: int, *, newest_first: bool,
         parse_id: Callable[[str], Any] = uuid.UUID) -> tuple[list[Any], str | None]:
    """A page of ``query`` (ordered by (inserted_at, id), newest or oldest first) after ``cursor``,
    and the cursor of the next page (None on the last). The cursor is a row value, so both
    databases seek their (..., inserted_at, id) index to it."""
    if cursor:
        inserted_at, last_id = decode_cursor(cursor, parse_id)
        position = peewee.Tuple(model.inserted_at, model.id)
        after = peewee.Tuple(inserted_at, str(last_id))
        query = query.where(position < after if newest_first else position > after)
    rows = list(query.limit(limit + 1))
    return rows[:limit], (encode_cursor(rows[limit - 1]) if len(rows) > limit else None)
