"""One-off runs: the request, the run as read, the list, and the query of a wait."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..vocabulary import RunState
from .common import Timestamp
from .output import OutputLine

MAX_ARGS = 32
MAX_ARG = 4096
MAX_RUN_TIMEOUT_S = 3600
# One argument: any text but NUL (argv cannot carry it).
Argument = Annotated[StrictStr, Field(max_length=MAX_ARG, pattern=r"^[^\x00]*$")]
RunStateField = Literal[tuple(RunState)]  # type: ignore[valid-type]


class RunIn(BaseModel):
    """The body of POST /api/deploy/apps/{id}/runs."""

    model_config = ConfigDict(extra="forbid")

    command: list[Argument] = Field(
        min_length=1, max_length=MAX_ARGS,
        description="The command and its arguments, in place of the image's CMD (an ENTRYPOINT gets them as "
                    "arguments); no shell unless you name one (e.g. [\"sh\", \"-c\", \"...\"])")
    timeout_s: int = Field(300, ge=1, le=MAX_RUN_TIMEOUT_S, description="Seconds it may run; then it is stopped")


class RunOut(BaseModel):
    id: uuid.UUID
    deployment_id: uuid.UUID
    state: RunStateField  # type: ignore[valid-type]
    exit_code: int | None = Field(description="The command's exit code (null: it did not end by itself)")
    timeout_s: int
    error: str | None = Field(description="Why it did not run (state error)")
    initiated_by: str | None
    inserted_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    output: list[OutputLine] = Field(description="Its last lines (stdout and stderr), env values masked; "
                                                 "empty until it finished")


class RunEnvelope(BaseModel):
    run: RunOut


class RunList(BaseModel):
    runs: list[RunOut] = Field(description="The newest first")


class RunQuery(BaseModel):
    """The query of GET .../runs/{run_id} (unknown parameters are ignored)."""

    wait: int = Field(0, ge=0, le=60, description="Seconds to wait for the run to finish (0: answer at once); "
                                                   "counted once against the rate limit")
    follow: bool = Field(False, description="Answer with Server-Sent Events: each line the run printed, from "
                                            "its first (`event: line`, as GET .../output?follow=true), then "
                                            "`event: end` with the run (`{\"run\": ...}`) once it finished, "
                                            "then the stream ends. `Last-Event-ID` resumes.")
