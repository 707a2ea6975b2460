"""The alert evaluator: every ALERT evaluation (a beat schedule, every 15 s) reads the current causes
(alerts/causes.py) and brings the Alert rows in line with them:

- a new cause: its row is created (the key is unique: of two evaluations, only the one whose INSERT won goes on)
  and one firing notice is enqueued;
- a cause still present: its repeat count and last_seen_at go up, nothing is sent;
- a cause gone: the row is marked resolved (compare-and-set on status) and one "resolved" notice is enqueued —
  except for one-shot alerts (corrections: events, not conditions), resolved without a notice once the event leaves
  ALERT_CORRECTION_LOOKBACK_SEC;
- a resolved cause back again: the same row fires again (compare-and-set), with a new firing notice.

Only one evaluation runs at a time (a lease on EvaluatorState, the database's row); the unique key and the
compare-and-set updates keep the notices single even without it. Enqueueing never raises: a broker that is down
leaves the row marked "not queued" (logged), and the next evaluation queues that notice again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from .causes import Cause, current_causes
from .models import Alert, EvaluatorState
from .notify import FIRING, RESOLVED

logger = logging.getLogger(__name__)

LEASE_SEC = 60  # longer than an evaluation can take (the task's time limit), short enough to survive a crash
RETENTION_DAYS = 30  # resolved alerts kept; far longer than ALERT_CORRECTION_LOOKBACK_SEC (a pruned one-shot
# still inside the look-back would fire again)
NOT_QUEUED = "not queued (broker unavailable): "  # + the notice; the next evaluation queues it again

Enqueue = Callable[[int, str], None]


def enqueue_notice(alert_id: int, notice: str) -> None:
    """Send the notice from a worker (alerts.tasks.send_alert), after the current transaction commits."""

    def send() -> None:
        from .tasks import send_alert

        try:
            send_alert.delay(alert_id, notice)
        except Exception:  # the broker is down: the alert stays recorded, and the next evaluation queues it again
            logger.exception("alert %s: could not enqueue its %s notice", alert_id, notice)
            Alert.objects.filter(pk=alert_id).update(last_error=f"{NOT_QUEUED}{notice}")

    transaction.on_commit(send)


def _claim(owner: str) -> bool:
    now = timezone.now()
    try:
        EvaluatorState.objects.get_or_create(pk=1)
    except IntegrityError:  # created by a concurrent evaluation
        pass
    return (
        EvaluatorState.objects.filter(pk=1)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_owner=owner, lease_until=now + timedelta(seconds=LEASE_SEC))
        == 1
    )


def _release(owner: str) -> None:
    EvaluatorState.objects.filter(pk=1, lease_owner=owner).update(
        lease_owner="", lease_until=None, evaluations=F("evaluations") + 1, last_evaluated_at=timezone.now()
    )


def evaluate(*, enqueue: Enqueue = enqueue_notice) -> dict:
    """One evaluation (see the module's docstring). Returns what it did, by count."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]
    if not _claim(owner):
        return {"skipped": "another evaluation holds the lease"}
    try:
        causes, failed_kinds = current_causes()
        return apply_causes(causes, failed_kinds=failed_kinds, enqueue=enqueue)
    finally:
        _release(owner)


def _fields(cause: Cause) -> dict:
    return {
        "kind": cause.kind,
        "one_shot": cause.one_shot,
        "account_name": cause.account_name[:64],
        "trade_id": cause.trade_id,
        "message": cause.message[:500],
        "admin_path": cause.admin_path[:255],
    }


def _existing(keys: list[str]) -> dict[str, Alert]:
    return {a.key: a for a in Alert.objects.filter(key__in=keys).only("pk", "key", "status", "one_shot")}


def apply_causes(causes: dict[str, Cause], *, failed_kinds: set[str] | None = None, enqueue: Enqueue) -> dict:
    """Bring the Alert rows in line with `causes`. Alerts of `failed_kinds` (their source could not be read) are
    neither repeated nor resolved this time."""
    now = timezone.now()
    counts = {"fired": 0, "refired": 0, "repeated": 0, "resolved": 0, "requeued": 0}
    for pk, error in Alert.objects.filter(last_error__startswith=NOT_QUEUED).values_list("pk", "last_error"):
        if Alert.objects.filter(pk=pk, last_error=error).update(last_error=""):
            counts["requeued"] += 1
            enqueue(pk, error[len(NOT_QUEUED) :])
    existing = _existing(list(causes))
    still: list[int] = []
    for key, cause in causes.items():
        alert = existing.get(key)
        if alert is None:
            try:
                with transaction.atomic():
                    alert = Alert.objects.create(key=key, first_seen_at=now, last_seen_at=now, **_fields(cause))
            except IntegrityError:  # another evaluation created it first: it sends the notice
                found = Alert.objects.filter(key=key).first()
                if found is not None and found.status == Alert.Status.FIRING:
                    still.append(found.pk)
                continue
            counts["fired"] += 1
            enqueue(alert.pk, FIRING)
            continue
        if alert.status == Alert.Status.RESOLVED:
            if alert.one_shot:
                continue  # an event is told once
            refired = Alert.objects.filter(pk=alert.pk, status=Alert.Status.RESOLVED).update(
                status=Alert.Status.FIRING,
                first_seen_at=now,
                last_seen_at=now,
                repeats=0,
                resolved_at=None,
                sent_at=None,
                resolved_sent_at=None,
                last_error="",
                **_fields(cause),
            )
            if refired:
                counts["refired"] += 1
                enqueue(alert.pk, FIRING)
            continue
        still.append(alert.pk)
    if still:
        counts["repeated"] = Alert.objects.filter(pk__in=still, status=Alert.Status.FIRING).update(
            repeats=F("repeats") + 1, last_seen_at=now
        )
    gone = (
        Alert.objects.filter(status=Alert.Status.FIRING)
        .exclude(key__in=list(causes))
        .exclude(kind__in=sorted(failed_kinds or ()))
        .only("pk", "one_shot")
    )
    for alert in gone:
        if Alert.objects.filter(pk=alert.pk, status=Alert.Status.FIRING).update(
            status=Alert.Status.RESOLVED, resolved_at=now
        ):
            counts["resolved"] += 1
            if not alert.one_shot:
                enqueue(alert.pk, RESOLVED)
    Alert.objects.filter(status=Alert.Status.RESOLVED, resolved_at__lt=now - timedelta(days=RETENTION_DAYS)).delete()
    if counts["fired"] or counts["refired"] or counts["resolved"] or counts["requeued"]:
        logger.info("alerts: %s", counts)
    return counts


__all__ = ["evaluate", "apply_causes", "enqueue_notice", "FIRING", "RESOLVED"]
