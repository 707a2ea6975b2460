"""Prometheus metrics, read from the database at scrape time (served at /metrics by reconciliation.health.views.metrics).

Why a collector over the DB rather than counters in memory: reconciles run in Celery workers, fills arrive in the
stream process, and /metrics is served by the web process — per-process counters would show the web process's
own (empty) view. ReconcileRun, TradeEvent, Trade and AccountSyncState already hold every fact, shared by all
processes and hosts, and survive restarts. A scrape costs a handful of aggregate queries; the result is cached for
METRICS_CACHE_SEC so several scrapers (or a fast one) do not multiply that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from trades.models import Account, Trade, TradeEvent

from ..models import AccountSyncState, OrphanPosition, PrunedTotal, ReconcileRun, StreamMiss
from ..stream.states import StreamState

DURATION_BUCKETS_SEC = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _seconds_since(moment: datetime, now: datetime) -> float:
    return max((now - moment).total_seconds(), 0.0)


# --- Counters over rows that retention prunes -------------------------------------------------------------------------
# tradeops_reconcile_runs, the duration histogram, tradeops_user_stream_connects and ..._missed_events count
# ReconcileRun and StreamMiss rows, which the daily prune deletes. Before it deletes them, carry_pruned() adds their
# counts to PrunedTotal (same definitions, below), and the collector adds those back: the counters never go down.

RUNS, DURATION, DURATION_SUM, CONNECTS, MISSES = "runs", "duration", "duration_sum", "connects", "misses"
Counts = dict[tuple[str, ...], float]


def _count_runs(runs: QuerySet[ReconcileRun]) -> Counts:
    rows = runs.values("kind", "reason", "outcome").annotate(n=Count("pk")).order_by()
    return {(r["kind"], r["reason"], r["outcome"]): r["n"] for r in rows}


def _count_durations(runs: QuerySet[ReconcileRun]) -> tuple[Counts, Counts]:
    """(bucket counts keyed (kind, le) with le "+Inf" the total, the sum of seconds keyed (kind,)) of runs that ran."""
    annotations = {
        f"le_{i}": Count("pk", filter=Q(duration_ms__lte=int(b * 1000))) for i, b in enumerate(DURATION_BUCKETS_SEC)
    }
    rows = (
        runs.exclude(outcome=ReconcileRun.Outcome.SKIPPED)
        .values("kind")
        .annotate(n=Count("pk"), total_ms=Sum("duration_ms"), **annotations)
        .order_by()
    )
    buckets: Counts = {}
    sums: Counts = {}
    for row in rows:
        for i, b in enumerate(DURATION_BUCKETS_SEC):
            buckets[(row["kind"], str(b))] = row[f"le_{i}"]
        buckets[(row["kind"], "+Inf")] = row["n"]
        sums[(row["kind"],)] = (row["total_ms"] or 0) / 1000
    return buckets, sums


def _count_connects(runs: QuerySet[ReconcileRun]) -> Counts:
    """Successful (re)connects per account id: each asks for a reconcile with reason ws_connect (kind=pending; it
    also asks for a position sync, kind=positions, not counted). A skipped run is retried: counted once."""
    rows = (
        runs.filter(reason="ws_connect", kind=ReconcileRun.Kind.PENDING)
        .exclude(outcome=ReconcileRun.Outcome.SKIPPED)
        .values("account_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {(str(r["account_id"]),): r["n"] for r in rows}


def _count_misses(misses: QuerySet[StreamMiss]) -> Counts:
    rows = misses.values("account_id").annotate(n=Count("pk")).order_by()
    return {(str(r["account_id"]),): r["n"] for r in rows}


def carry_pruned(*, runs: QuerySet[ReconcileRun] | None = None, misses: QuerySet[StreamMiss] | None = None) -> None:
    """Add what `runs` / `misses` count to PrunedTotal; call in the transaction that deletes them."""
    counted: list[tuple[str, Counts]] = []
    if runs is not None:
        buckets, sums = _count_durations(runs)
        counted += [(RUNS, _count_runs(runs)), (DURATION, buckets), (DURATION_SUM, sums)]
        counted.append((CONNECTS, _count_connects(runs)))
    if misses is not None:
        counted.append((MISSES, _count_misses(misses)))
    for metric, counts in counted:
        for labels, value in counts.items():
            if not value:
                continue
            row, _ = PrunedTotal.objects.get_or_create(metric=metric, labels=json.dumps(labels))
            PrunedTotal.objects.filter(pk=row.pk).update(value=F("value") + value)


def _carried(metric: str) -> Counts:
    return {
        tuple(json.loads(labels)): value
        for labels, value in PrunedTotal.objects.filter(metric=metric).values_list("labels", "value")
    }


def _plus(live: Counts, carried: Counts) -> Counts:
    total = dict(carried)
    for key, value in live.items():
        total[key] = total.get(key, 0) + value
    return total


class TradeopsCollector(Collector):
    def __init__(self, cache_sec: float | None = None) -> None:
        self.cache_sec = cache_sec
        self._lock = threading.Lock()
        self._cached: tuple[float, list] | None = None

    def collect(self) -> list[Metric]:
        cache_sec = settings.METRICS_CACHE_SEC if self.cache_sec is None else self.cache_sec
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] >= cache_sec:
                self._cached = (time.monotonic(), list(self._families()))
            return list(self._cached[1])

    def _families(self) -> Iterator[Metric]:
        now = timezone.now()
        yield from self._reconcile_runs()
        yield from self._state_changes()
        yield from self._accounts(now)
        yield from self._pending(now)

    @staticmethod
    def _reconcile_runs() -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "tradeops_reconcile_runs", "Reconcile runs (ReconcileRun rows).", labels=["kind", "reason", "outcome"]
        )
        for labels, n in sorted(_plus(_count_runs(ReconcileRun.objects.all()), _carried(RUNS)).items()):
            runs.add_metric(list(labels), n)
        yield runs

        duration = HistogramMetricFamily(
            "tradeops_reconcile_duration_seconds", "Duration of reconcile runs that ran (not skipped).", labels=["kind"]
        )
        live_buckets, live_sums = _count_durations(ReconcileRun.objects.all())
        buckets = _plus(live_buckets, _carried(DURATION))
        sums = _plus(live_sums, _carried(DURATION_SUM))
        for (kind,), total in sorted(sums.items()):
            edges = [str(b) for b in DURATION_BUCKETS_SEC] + ["+Inf"]
            duration.add_metric([kind], [(le, buckets.get((kind, le), 0)) for le in edges], sum_value=total)
        yield duration

    @staticmethod
    def _state_changes() -> Iterator[Metric]:
        changes = CounterMetricFamily(
            "tradeops_trade_state_changes",
            "Audited trade changes (TradeEvent rows) by the path that made them and the status they led to: "
            "source=reconcile|cancel_verify|admin with to_status=open are fills the other paths missed.",
            labels=["source", "to_status"],
        )
        for row in TradeEvent.objects.values("source", "to_status").annotate(n=Count("pk")).order_by():
            changes.add_metric([row["source"], row["to_status"] or ""], row["n"])
        yield changes

    @staticmethod
    def _accounts(now: datetime) -> Iterator[Metric]:
        weight = GaugeMetricFamily(
            "tradeops_binance_used_weight", "X-MBX-USED-WEIGHT-1M last seen.", labels=["account"]
        )
        last_reconcile = GaugeMetricFamily(
            "tradeops_last_reconcile_age_seconds", "Seconds since the account's last reconcile.", labels=["account"]
        )
        connected = GaugeMetricFamily(
            "tradeops_user_stream_connected", "1 when the user stream is connected.", labels=["account"]
        )
        state = GaugeMetricFamily(
            "tradeops_user_stream_state",
            "The user stream's state (1 for the current one).",
            labels=["account", "state"],
        )
        last_event = GaugeMetricFamily(
            "tradeops_user_stream_last_event_age_seconds",
            "Seconds since the last user-stream event.",
            labels=["account"],
        )
        connects = CounterMetricFamily(
            "tradeops_user_stream_connects",
            "Successful user-stream (re)connects, counted by the reconcile each one triggers "
            "(kind=pending, reason=ws_connect).",
            labels=["account"],
        )
        orphans = GaugeMetricFamily("tradeops_orphan_positions_open", "Open orphan positions.", labels=["account"])
        missed = CounterMetricFamily(
            "tradeops_user_stream_missed_events",
            "Order changes REST look-ups found that the connected user stream never delivered (StreamMiss rows).",
            labels=["account"],
        )
        deaf = GaugeMetricFamily(
            "tradeops_user_stream_deaf",
            "1 while the account's stream is marked deaf (connected, missing events).",
            labels=["account"],
        )

        names = dict(Account.objects.filter(is_active=True).values_list("pk", "name"))
        states = {s.account_id: s for s in AccountSyncState.objects.filter(account_id__in=names)}
        ws_connects = _plus(_count_connects(ReconcileRun.objects.filter(account_id__in=names)), _carried(CONNECTS))
        misses = _plus(_count_misses(StreamMiss.objects.filter(account_id__in=names)), _carried(MISSES))
        open_orphans = dict(
            OrphanPosition.objects.filter(account_id__in=names, status=OrphanPosition.Status.OPEN)
            .values("account_id")
            .annotate(n=Count("pk"))
            .order_by()
            .values_list("account_id", "n")
        )
        for pk, name in sorted(names.items(), key=lambda item: item[1]):
            s = states.get(pk)
            weight.add_metric([name], s.used_weight if s else 0)
            if s and s.last_reconcile_at:
                last_reconcile.add_metric([name], _seconds_since(s.last_reconcile_at, now))
            connected.add_metric([name], 1 if s and s.stream_state == StreamState.CONNECTED else 0)
            state.add_metric([name, (s.stream_state if s else "") or "none"], 1)
            if s and s.stream_last_event_at:
                last_event.add_metric([name], _seconds_since(s.stream_last_event_at, now))
            connects.add_metric([name], ws_connects.get((str(pk),), 0))
            orphans.add_metric([name], open_orphans.get(pk, 0))
            missed.add_metric([name], misses.get((str(pk),), 0))
            deaf.add_metric([name], 1 if s and s.stream_deaf_since else 0)
        yield from (weight, last_reconcile, connected, state, last_event, connects, orphans, missed, deaf)

    @staticmethod
    def _pending(now: datetime) -> Iterator[Metric]:
        pending = GaugeMetricFamily("tradeops_pending_trades", "Pending trades.", labels=["account"])
        oldest = GaugeMetricFamily(
            "tradeops_oldest_pending_age_seconds", "Age of the oldest pending trade.", labels=["account"]
        )
        rows = (
            Trade.objects.filter(status=Trade.Status.PENDING)
            .values("account__name")
            .annotate(n=Count("pk"), oldest=Min("created_at"))
            .order_by()
        )
        for row in rows:
            pending.add_metric([row["account__name"]], row["n"])
            oldest.add_metric([row["account__name"]], _seconds_since(row["oldest"], now))
        flagged = GaugeMetricFamily("tradeops_trades_needing_operator", "Trades flagged for an operator.")
        flagged.add_metric([], Trade.objects.filter(needs_operator=True).count())
        yield from (pending, oldest, flagged)


def build_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TradeopsCollector())
    return registry


__all__ = ["TradeopsCollector", "build_registry", "carry_pruned"]
