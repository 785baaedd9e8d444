"""One HTTP GET as the modules use it: no proxy, no redirects followed, any status an answer."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer too


def http_get(url: str, timeout: float, return_content: bool = False) -> tuple[int, str, str]:
    """(status, body, error); status -1 when no HTTP answer came back (refused, timeout, not HTTP)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace") if return_content else ""
            return int(response.status), body, ""
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace") if return_content else ""
        return int(exc.code), body, ""
    except http.client.HTTPException as exc:  # something answered, but not HTTP
        return -1, "", f"not an HTTP answer: {exc.__class__.__name__}"
    except (OSError, ValueError) as exc:
        return -1, "", str(getattr(exc, "reason", exc))
