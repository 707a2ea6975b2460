"""Health (/health/) and Prometheus metrics (/metrics).

/health/ answers 200 when every check of checks.py is "ok", 503 otherwise, with a JSON body naming each check.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .checks import CHECKS

logger = logging.getLogger(__name__)

# Who sees what (the details name every account, the schedules and the errors):
# - /health/'s status and per-check ok/error: anyone who can reach it (load balancers, probes);
# - /health/'s `details`: a request with `Authorization: Bearer <METRICS_TOKEN>`, or a logged-in active staff user
#   (who sees the same in the admin);
# - /metrics: with METRICS_TOKEN set, only with that bearer token (401 otherwise); without one, open, for a
#   Prometheus on a private network (keep it off the internet at the proxy).
# The header only, never `?token=`: a query string ends up in proxy and access logs.


def has_metrics_token(request: HttpRequest) -> bool:
    """The request carries `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time); never true while no
    token is configured."""
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def may_see_health_details(request: HttpRequest) -> bool:
    if has_metrics_token(request):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    checks, details = {}, {}
    for name, check in CHECKS.items():
        try:
            ok, info = check()
        except Exception as exc:  # noqa: BLE001 — a failing check is the answer, not a 500
            logger.error("health: %s check failed: %s: %s", name, type(exc).__name__, exc)
            ok, info = False, {"error": f"{type(exc).__name__}: {exc}"[:300]}
        checks[name] = "ok" if ok else "error"
        if info:
            details[name] = info
    healthy = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "error", "checks": checks}
    if may_see_health_details(request):
        body["details"] = details
    return JsonResponse(body, status=200 if healthy else 503)


_registry = None


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .metrics import build_registry

    if settings.METRICS_TOKEN and not has_metrics_token(request):
        response = HttpResponse(
            "401 Unauthorized: /metrics needs Authorization: Bearer <METRICS_TOKEN>\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    global _registry
    if _registry is None:
        _registry = build_registry()
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
