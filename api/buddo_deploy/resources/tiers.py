from __future__ import annotations

import falcon
from pydantic import TypeAdapter

from ..schemas import TierOut
from ..services.tiers import list_tiers

_TIERS = TypeAdapter(list[TierOut])


class TiersResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        tiers = [TierOut.model_validate(tier, from_attributes=True) for tier in list_tiers()]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _TIERS.dump_json(tiers)
