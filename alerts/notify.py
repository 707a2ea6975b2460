"""Sending an alert's notices through Apprise (ALERT_URLS), once each.

A send claims the row first (claim_until, a compare-and-set), so two copies of a send task, or a firing and a
resolved notice of one alert, are never in flight at once; the notice is marked delivered (sent_at,
resolved_sent_at) only after Apprise reports success, and a failed delivery releases the claim and raises
DeliveryFailed for the task to retry. A "resolved" notice is sent only for an alert whose firing notice was; a
firing notice is not sent once its cause has cleared (an event, a one-shot alert, is still sent).

With no ALERT_URLS the alerts are recorded (admin) and nothing is sent. Nothing here ever sees an API key or secret:
the messages are built from ids, names, symbols and quantities.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import apprise
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .models import Alert

logger = logging.getLogger(__name__)

CLAIM_SEC = 120  # a send in flight holds the row this long at most (Apprise's own timeouts are far shorter)
FIRING, RESOLVED = "firing", "resolved"  # the two notices of an alert (evaluator.py sends them here)


class DeliveryFailed(Exception):
    """Apprise could not deliver to (some of) ALERT_URLS: the task retries."""


class Busy(Exception):
    """Another send of this alert is in flight: the task retries shortly."""


def alert_urls() -> list[str]:
    return list(settings.ALERT_URLS)


def admin_link(path: str) -> str:
    """The admin page as a link: ADMIN_BASE_URL (scheme and host) + the path; the path alone without it."""
    if not path:
        return settings.ADMIN_BASE_URL or ""
    return f"{settings.ADMIN_BASE_URL.rstrip('/')}{path}"


def render(alert: Alert, notice: str) -> tuple[str, str]:
    """Title and the one-line body."""
    link = admin_link(alert.admin_path)
    if notice == RESOLVED:
        title = f"tradeops RESOLVED: {alert.kind}"
        body = f"RESOLVED {alert.key}: {alert.message} (seen {alert.repeats + 1} times)"
    else:
        title = f"tradeops FIRING: {alert.kind}"
        body = f"FIRING {alert.key}: {alert.message}"
    if link:
        body += f" — {link}"
    return title, body.replace("\n", " ")


def deliver(title: str, body: str, *, notify_type: str = apprise.NotifyType.FAILURE) -> bool:
    """Send through every ALERT_URLS. False when none is configured; DeliveryFailed when Apprise fails."""
    urls = alert_urls()
    if not urls:
        return False
    notifier = apprise.Apprise()
    for url in urls:
        if not notifier.add(url):
            raise DeliveryFailed("an ALERT_URLS entry is not a URL Apprise knows (its scheme)")
    if not notifier.notify(title=title, body=body, notify_type=notify_type):
        raise DeliveryFailed("Apprise could not deliver to every ALERT_URLS entry")
    return True


def _claimable(notice: str) -> Q:
    if notice == RESOLVED:
        return Q(status=Alert.Status.RESOLVED, one_shot=False, resolved_sent_at__isnull=True, sent_at__isnull=False)
    return Q(sent_at__isnull=True) & (Q(status=Alert.Status.FIRING) | Q(one_shot=True))


def send_notice(alert_id: int, notice: str) -> str:
    """Deliver the alert's `notice` (firing or resolved) once. Returns "sent", "not_configured" or "nothing_to_do"
    (already delivered, or no longer due); raises Busy or DeliveryFailed for the task to retry."""
    if notice not in (FIRING, RESOLVED):
        raise ValueError(f"notice must be {FIRING!r} or {RESOLVED!r}, not {notice!r}")
    now = timezone.now()
    free = Q(claim_until__isnull=True) | Q(claim_until__lt=now)
    claimed = Alert.objects.filter(Q(pk=alert_id) & _claimable(notice) & free).update(
        claim_until=now + timedelta(seconds=CLAIM_SEC)
    )
    if not claimed:
        if Alert.objects.filter(Q(pk=alert_id) & ~free).exists():
            raise Busy(f"alert {alert_id}: another notice is being sent")
        return "nothing_to_do"
    try:
        alert = Alert.objects.get(pk=alert_id)
        title, body = render(alert, notice)
        kind = apprise.NotifyType.SUCCESS if notice == RESOLVED else apprise.NotifyType.FAILURE
        delivered = deliver(title, body, notify_type=kind)
    except Exception as exc:
        Alert.objects.filter(pk=alert_id).update(claim_until=None, last_error=f"{type(exc).__name__}: {exc}"[:255])
        logger.warning("alert %s: %s notice not delivered: %s", alert_id, notice, exc)
        raise
    stamp = {"resolved_sent_at": timezone.now()} if notice == RESOLVED else {"sent_at": timezone.now()}
    if not delivered:
        Alert.objects.filter(pk=alert_id).update(claim_until=None, last_error="not sent: ALERT_URLS is empty")
        logger.info("alert %s (%s): recorded, not sent (ALERT_URLS is empty)", alert_id, alert.key)
        return "not_configured"
    Alert.objects.filter(pk=alert_id).update(claim_until=None, last_error="", **stamp)
    logger.info("alert %s: %s notice sent: %s", alert_id, notice, alert.key)
    return "sent"


def send_test() -> str:
    """A test message through ALERT_URLS: "sent" or "not_configured"; DeliveryFailed when Apprise fails."""
    sent = deliver(
        "tradeops: test alert",
        f"TEST alert from tradeops at {timezone.now():%Y-%m-%d %H:%M:%S} UTC: alerts reach this channel"
        + (f" — {admin_link('/admin/alerts/alert/')}" if settings.ADMIN_BASE_URL else ""),
        notify_type=apprise.NotifyType.INFO,
    )
    return "sent" if sent else "not_configured"
