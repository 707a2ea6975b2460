"""Retention of the reconcile reports (ReconcileRun) and of the stream's missed-event log that goes with them."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ..models import ReconcileRun
from ..stream import guard as stream_guard


def prune_reconcile_runs(*, older_than_days: int | None = None, batch: int = 5000) -> int:
    """Delete ReconcileRun rows older than RECONCILE_RUN_RETENTION_DAYS, in batches (one run per account per minute
    is 1.4 M rows a day for 1,000 accounts). Trades' audit events are never pruned."""
    days = settings.RECONCILE_RUN_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    stream_guard.prune_stream_misses(before=cutoff)  # the missed-event log goes with the reports
    deleted = 0
    while True:
        ids = list(ReconcileRun.objects.filter(started_at__lt=cutoff).values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += ReconcileRun.objects.filter(pk__in=ids).delete()[0]
