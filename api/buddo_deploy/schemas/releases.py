"""Releases and rollbacks."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from .common import MAX_PAGE, Timestamp, integral


class ReleasesQuery(BaseModel):
    """The query of GET /api/deploy/apps/{id}/releases (unknown parameters are ignored)."""

    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Page size")
    cursor: StrictStr | None = Field(None, min_length=1, max_length=9, pattern=r"^[0-9]+$",
                                     description="next_cursor of the previous page")


class RollbackIn(BaseModel):
    """The body of POST /api/deploy/apps/{id}/rollback (optional)."""

    model_config = ConfigDict(extra="forbid")

    # Bounds inside the Annotated: on an optional field pydantic would not write them as JSON Schema.
    release: Annotated[StrictInt, Ge(1), Le(10**9), BeforeValidator(integral)] | None = Field(
        None, description="The release to run again; default: the one before the newest")


class ReleaseOut(BaseModel):
    number: int
    image: str = Field(description="The image reference the deployment was created with")
    image_digest: str = Field(description="The digest that ran; a rollback runs the image by this digest")
    pinned: bool = Field(description="Run by digest (a rollback), not by the tag")
    rollback_of: int | None = Field(description="The release a rollback ran again")
    initiated_by: str | None
    created_at: Timestamp
    kept: bool = Field(description="The image is kept on the host: a rollback to this release is possible")
    port: int | None = Field(None, description="The container port it ran with (null: a release made before "
                             "releases kept it)")
    env_var_names: list[str] | None = Field(None, description="The names of the env it ran with (a rollback "
                                            "restores the values too; null: made before releases kept them)")


class ReleaseList(BaseModel):
    releases: list[ReleaseOut] = Field(description="Newest first")
    next_cursor: str | None
