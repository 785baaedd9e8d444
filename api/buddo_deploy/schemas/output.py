"""An app's stdout and stderr, read on its host."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from .common import Timestamp

MAX_TAIL = 5000
_RFC3339_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]")


class OutputQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/output (unknown parameters are ignored)."""

    tail: int = Field(100, ge=1, le=MAX_TAIL, description="Lines at most (stdout and stderr together)")
    since: AwareDatetime | None = Field(None, description="Only lines after this RFC 3339 time (with offset)")
    follow: bool = Field(False, description="Stream the lines printed from now on as Server-Sent Events "
                                            "(event `line`, id for Last-Event-ID), across restarts")

    @field_validator("since", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # pydantic would take a number ("0.5") as Unix time; the parameter is an RFC 3339 time.
        if isinstance(value, str) and not _RFC3339_DATE.match(value):
            raise ValueError("must be an RFC 3339 time with offset, e.g. 2026-01-01T00:00:00Z")
        return value

    @field_validator("since")
    @classmethod
    def _since(cls, value: dt.datetime | None) -> dt.datetime | None:
        # Every line is newer than the epoch: an earlier instant asks for all of them.
        if value is not None and value < dt.datetime(1970, 1, 1, tzinfo=dt.UTC):
            return None
        return value


class OutputLine(BaseModel):
    at: str = Field(description="When the app printed it (RFC 3339, from the container runtime)")
    stream: Literal["stdout", "stderr"]
    text: str = Field(description="The line, env var values masked as ********")


class OutputContainer(BaseModel):
    id: str
    name: str
    state: str = Field(description="running, exited, ...")
    exit_code: int | None


class OutputRefresh(BaseModel):
    job_id: int = Field(description="The read's job (GET /api/deploy/apps/{id}/jobs/{job_id})")
    state: Literal["queued", "running"]
    queued_at: Timestamp


class OutputOut(BaseModel):
    lines: list[OutputLine] = Field(description="Oldest first (newest last)")
    container: OutputContainer | None = Field(
        description="The container read; null when the deployment has none (or no read covers this request yet)")
    collected_at: Timestamp | None = Field(
        description="When a worker read these lines on the host; null (with status 202): no read yet")
    age_s: float | None = Field(description="Seconds since collected_at")
    refresh: OutputRefresh | None = Field(
        description="A newer read, queued or running (for a read older than BUDDO_OUTPUT_MAX_AGE, or none yet): "
        "ask again after Retry-After (202) or a second or two")
    last_error: str | None = Field(
        description="Why the latest read failed (e.g. the host is unreachable); the lines are from an earlier one")
