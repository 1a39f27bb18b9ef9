"""The one urllib opener every outbound client uses: redirects are never followed.

urllib follows 301/302/303 by turning a POST into a GET without its body and sends the
Authorization header to wherever the redirect points, another host included; a client here
carries a token or a secret URL, so a redirect is the server's answer, never a place to go.
"""

from __future__ import annotations

import urllib.request
from typing import Any


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib then raises HTTPError with the 3xx status."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def no_redirect_opener() -> urllib.request.OpenerDirector:
    """An opener whose 3xx answers are HTTPErrors, so no request or header leaves for
    another URL."""
    return urllib.request.build_opener(NoRedirect)
