"""Times in the operator's time zone: the browser names its zone (Intl, in a cookie set by every admin page), and this
middleware activates it for the request. No cookie, or a name zoneinfo does not know: TIME_ZONE (UTC). Only the
display changes; everything stored and compared stays UTC."""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

COOKIE = "tradeops_tz"


def zone_from(name: str | None) -> ZoneInfo | None:
    """The zone a cookie names, or None for a missing, malformed or unknown one (never an error)."""
    if not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


class OperatorTimeZoneMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        zone = zone_from(request.COOKIES.get(COOKIE))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
