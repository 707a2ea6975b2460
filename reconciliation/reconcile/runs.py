"""Retention of the reconcile reports (ReconcileRun) and of the stream's missed-event log that goes with them."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..health.metrics import carry_pruned
from ..models import ReconcileRun, StreamMiss


def prune_reconcile_runs(*, older_than_days: int | None = None, batch: int = 5000) -> int:
    """Delete ReconcileRun rows older than RECONCILE_RUN_RETENTION_DAYS, in batches (one run per account per minute
    is 1.4 M rows a day for 1,000 accounts), and the stream's missed-event log with them. What /metrics counts of the
    deleted rows is carried into PrunedTotal in the same transaction, so its counters never go down. Trades' audit
    events are never pruned."""
    days = settings.RECONCILE_RUN_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    while True:
        with transaction.atomic():
            ids = list(StreamMiss.objects.filter(detected_at__lt=cutoff).values_list("pk", flat=True)[:batch])
            if not ids:
                break
            carry_pruned(misses=StreamMiss.objects.filter(pk__in=ids))
            StreamMiss.objects.filter(pk__in=ids).delete()
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(ReconcileRun.objects.filter(started_at__lt=cutoff).values_list("pk", flat=True)[:batch])
            if not ids:
                return deleted
            carry_pruned(runs=ReconcileRun.objects.filter(pk__in=ids))
            deleted += ReconcileRun.objects.filter(pk__in=ids).delete()[0]
