"""The numbers on the admin's home page: pending trades by age, flagged trades, open orphans, each active account's
user stream, and the request weight used this minute per egress IP.

A fixed number of queries whatever the number of trades (aggregates); one row per active account for the streams;
the weight comes from the shared budget store (trades/egress.py), and an unreadable store is reported, not raised.
Nothing here reads an account's keys.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.db import models
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from reconciliation.models import AccountSyncState, OrphanPosition
from reconciliation.reconcile.audit import stream_heartbeat_max_age
from reconciliation.stream.states import StreamState
from trades import egress
from trades.models import Account, Trade

logger = logging.getLogger(__name__)

# (label, older than, younger than) — pending trades by age since they were written.
AGE_BUCKETS: list[tuple[str, timedelta | None, timedelta | None]] = [
    ("< 1 min", None, timedelta(minutes=1)),
    ("1–5 min", timedelta(minutes=1), timedelta(minutes=5)),
    ("5–60 min", timedelta(minutes=5), timedelta(hours=1)),
    ("> 1 h", timedelta(hours=1), None),
]


@dataclass(frozen=True)
class Bucket:
    label: str
    count: int
    url: str
    urgent: bool  # old enough that the reconcile should have settled it


@dataclass(frozen=True)
class StreamRow:
    account_id: int
    account: str
    state: str  # the badge's word
    since: datetime | None
    last_event_at: datetime | None
    note: str


@dataclass(frozen=True)
class EgressRow:
    egress: str
    used: int | None  # None: the store could not be read
    limit: int
    limit_known: bool
    error: str = ""

    @property
    def percent(self) -> int:
        return 0 if not self.used or not self.limit else round(100 * self.used / self.limit)


def _changelist(model: type[models.Model], **params: str) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def pending_by_age(now: datetime) -> list[Bucket]:
    """One aggregate query over the pending trades."""
    counts = {}
    conditions = {}
    for index, (_, older, younger) in enumerate(AGE_BUCKETS):
        condition = Q()
        if older is not None:
            condition &= Q(created_at__lte=now - older)
        if younger is not None:
            condition &= Q(created_at__gt=now - younger)
        conditions[f"b{index}"] = condition
        counts[f"b{index}"] = Count("pk", filter=condition)
    totals = Trade.objects.filter(status=Trade.Status.PENDING).aggregate(**counts)
    buckets = []
    for index, (label, older, younger) in enumerate(AGE_BUCKETS):
        params: dict[str, str] = {"status__exact": Trade.Status.PENDING}
        if older is not None:
            params["created_at__lte"] = (now - older).isoformat()
        if younger is not None:
            params["created_at__gt"] = (now - younger).isoformat()
        urgent = older is not None and older >= timedelta(minutes=5)
        buckets.append(Bucket(label, totals[f"b{index}"] or 0, _changelist(Trade, **params), urgent))
    return buckets


def flagged_trades() -> tuple[int, str]:
    """Trades reconciliation could not decide alone (needs_operator), and the trade list filtered to them."""
    return Trade.objects.filter(needs_operator=True).count(), _changelist(Trade, flagged="yes")


def open_orphans() -> tuple[int, str]:
    return (
        OrphanPosition.objects.filter(status=OrphanPosition.Status.OPEN).count(),
        _changelist(OrphanPosition, status__exact=OrphanPosition.Status.OPEN),
    )


def stream_rows(now: datetime) -> list[StreamRow]:
    """Each active account's user stream as /health/ judges it: a state is trusted only while the stream process's
    heartbeat is fresh (a killed process leaves "connected" behind), and a deaf stream is named."""
    heartbeat_max_age = stream_heartbeat_max_age()
    rows = []
    for account in (
        Account.objects.filter(is_active=True)
        .select_related("sync_state")
        .only(
            "pk",
            "name",
            "sync_state__stream_state",
            "sync_state__stream_state_at",
            "sync_state__stream_last_event_at",
            "sync_state__stream_heartbeat_at",
            "sync_state__stream_deaf_since",
        )
    ):
        try:
            state: AccountSyncState | None = account.sync_state
        except AccountSyncState.DoesNotExist:
            state = None
        if state is None or not state.stream_state:
            rows.append(StreamRow(account.pk, account.name, "not running", None, None, "no stream has run"))
            continue
        beat = state.stream_heartbeat_at
        if state.stream_state == StreamState.STOPPED:
            word, note = "stopped", ""
        elif beat is None or now - beat >= heartbeat_max_age:
            word, note = "no heartbeat", f"last said {state.stream_state}; its process is gone or stuck"
        elif state.stream_deaf_since is not None:
            word, note = "deaf", f"{state.stream_state}, but missing events since {state.stream_deaf_since:%H:%M:%S}"
        else:
            word, note = state.stream_state, ""
        rows.append(StreamRow(account.pk, account.name, word, state.stream_state_at, state.stream_last_event_at, note))
    return rows


def _rest_urls() -> list[str]:
    urls = [settings.BINANCE_FUTURES_REST_URL]
    if Account.objects.filter(is_active=True, use_testnet=True).exists():
        urls.append(settings.BINANCE_FUTURES_TESTNET_REST_URL)
    return list(dict.fromkeys(url.rstrip("/") for url in urls))


def egress_weights() -> tuple[list[EgressRow], str]:
    """The weight counted this minute (Binance's windows start on the minute) on every egress (source address ×
    exchange host) the accounts use, from the budget every process shares; ("", error) when it cannot be read."""
    try:
        budget = egress.shared_budget()
    except Exception as exc:  # noqa: BLE001 — a misconfigured store is shown on the page, the page still renders
        logger.warning("desk: weight budget store not usable: %s", exc)
        return [], f"budget store not usable: {type(exc).__name__}: {exc}"
    rows = []
    now_ms = int(time.time() * 1000)
    addresses: list[str | None] = list(egress.source_addresses()) or [None]
    for rest_url in _rest_urls():
        known = egress.EXCHANGE_LIMITS.get(rest_url)
        limit = known or egress.DEFAULT_WEIGHT_LIMIT
        for address in addresses:
            name = egress.egress_name(address, urlsplit(rest_url).netloc)
            try:
                used: int | None = budget.used(name, now_ms)
                error = ""
            except Exception as exc:  # noqa: BLE001 — Redis down or the file unreadable: say so, keep the page
                logger.warning("desk: weight of %s not readable: %s", name, exc)
                used, error = None, f"{type(exc).__name__}: {exc}"
            rows.append(EgressRow(name, used, limit, known is not None, error))
    return rows, ""


def home_panels() -> dict:
    now = timezone.now()
    flagged, flagged_url = flagged_trades()
    orphans, orphans_url = open_orphans()
    weights, weights_error = egress_weights()
    return {
        "now": now,
        "pending": pending_by_age(now),
        "pending_url": _changelist(Trade, status__exact=Trade.Status.PENDING),
        "flagged": flagged,
        "flagged_url": flagged_url,
        "orphans": orphans,
        "orphans_url": orphans_url,
        "streams": stream_rows(now),
        "weights": weights,
        "weights_error": weights_error,
        "minute_started": now.replace(second=0, microsecond=0),
    }
