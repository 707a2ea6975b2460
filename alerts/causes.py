"""What is wrong right now, read from the database and the shared egress budget: the current causes, each with a
stable key. No state of its own and no side effect: alerts/evaluator.py turns the set into Alert rows.

| key                                 | present while                                                            |
|-------------------------------------|--------------------------------------------------------------------------|
| trade_flagged:<trade id>            | the trade has needs_operator set                                         |
| orphan:<orphan id>                  | the orphan position is open                                              |
| stream_down:<account id>            | /health/'s user_stream check fails for the account (deaf: for longer     |
|                                     | than HEALTH_STREAM_GRACE_SEC)                                            |
| egress_limited:<egress>             | a 429 or 418 marks the egress IP (until its Retry-After)                 |
| beat_stale                          | /health/'s beat check fails                                              |
| workers_stale                       | /health/'s workers check fails                                           |
| reconcile_stopped_early:<account id>| the account's last ALERT_STOPPED_EARLY_RUNS pending reconciles all       |
|                                     | stopped early                                                            |
| correction:<trade event id>         | (one-shot) a failed or cancelled trade was changed back by reconciliation |
|                                     | within the last ALERT_CORRECTION_LOOKBACK_SEC                            |

The thresholds are /health/'s own (its check functions are called, not copied).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from reconciliation.models import OrphanPosition, ReconcileRun
from trades import egress
from trades.models import Account, Trade, TradeEvent

logger = logging.getLogger(__name__)

MAX_PER_KIND = 500  # flagged trades, orphans or corrections read per evaluation (a flood is one page, not a stall)


@dataclass(frozen=True)
class Cause:
    key: str
    kind: str
    message: str  # one line: what happened, naming the account and the trade
    account_name: str = ""
    trade_id: int | None = None
    admin_path: str = ""
    one_shot: bool = False


def _qty(value: Decimal | None) -> str:
    """0.0100000000 → 0.01 (the database keeps 10 places)."""
    if value is None:
        return "?"
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _admin(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


def flagged_trades() -> Iterator[Cause]:
    trades = Trade.objects.filter(needs_operator=True).select_related("account").order_by("pk")[:MAX_PER_KIND]
    for trade in trades:
        flag = (
            TradeEvent.objects.filter(trade=trade, payload__flag="needs_operator")
            .order_by("-created_at", "-pk")
            .first()
        )
        reason = (flag.payload.get("reason") if flag else "") or "see its events"
        yield Cause(
            key=f"trade_flagged:{trade.pk}",
            kind="trade_flagged",
            message=f"trade {trade.pk} ({trade.symbol} {trade.side} {_qty(trade.quantity)}, {trade.status}) of account "
            f"{trade.account.name} needs an operator: {reason}",
            account_name=trade.account.name,
            trade_id=trade.pk,
            admin_path=_admin("trades_trade_change", trade.pk),
        )


def open_orphans() -> Iterator[Cause]:
    orphans = (
        OrphanPosition.objects.filter(status=OrphanPosition.Status.OPEN)
        .select_related("account")
        .order_by("pk")[:MAX_PER_KIND]
    )
    for orphan in orphans:
        yield Cause(
            key=f"orphan:{orphan.pk}",
            kind="orphan",
            message=f"orphan position on account {orphan.account.name}: {orphan.symbol} {orphan.position_side} "
            f"{_qty(orphan.quantity)} (exchange holds {_qty(orphan.exchange_position)}) that no trade explains",
            account_name=orphan.account.name,
            admin_path=_admin("reconciliation_orphanposition_change", orphan.pk),
        )


def _parse(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment) if moment else None


def down_streams(now: datetime | None = None) -> Iterator[Cause]:
    """/health/'s user_stream verdict per account. A deaf mark gets HEALTH_STREAM_GRACE_SEC to be cleared by the
    reconnect it triggers; an account that has never streamed (just added) gets the same grace from its creation."""
    from reconciliation.health.checks import check_user_streams

    now = now or timezone.now()
    grace = timedelta(seconds=settings.HEALTH_STREAM_GRACE_SEC)
    _, details = check_user_streams()
    bad = {name: info for name, info in details.items() if not info.get("ok")}
    if not bad:
        return
    accounts = {a.name: a for a in Account.objects.filter(name__in=list(bad)).only("pk", "name", "created_at")}
    for name, info in sorted(bad.items()):
        account = accounts.get(name)
        if account is None:
            continue
        deaf_since = _parse(info.get("deaf_since"))
        heartbeat = _parse(info.get("heartbeat_at"))
        if heartbeat is None and info.get("state") == "none" and now - account.created_at < grace:
            continue  # not picked up by a stream process yet
        if deaf_since is not None:
            if info.get("streaming") and now - deaf_since < grace:
                continue  # marked deaf moments ago, otherwise fine: the reconnect it triggers is under way
            what = f"deaf (connected, missing order events) since {deaf_since:%H:%M:%S} UTC"
        else:
            since = _parse(info.get("since"))
            what = f"{info.get('state')}" + (f" since {since:%H:%M:%S} UTC" if since else "")
            if heartbeat is None:
                what += ", no stream process has shown a heartbeat"
            else:
                what += f", last stream heartbeat {heartbeat:%H:%M:%S} UTC"
        yield Cause(
            key=f"stream_down:{account.pk}",
            kind="stream_down",
            message=f"user stream of account {name} is down: {what}",
            account_name=name,
            admin_path=_admin("trades_account_change", account.pk),
        )


def _accounts_on(egress_name: str) -> list[str]:
    address = egress_name.rsplit("@", 1)[0]
    names = []
    for pk, name in Account.objects.filter(is_active=True).order_by("name").values_list("pk", "name"):
        if (egress.source_address_for(pk) or egress.DEFAULT_EGRESS) == address:
            names.append(name)
    return names


def limited_egresses(now_ms: int | None = None) -> Iterator[Cause]:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    marks = egress.shared_budget().limited_marks(now_ms)
    for name, (until_ms, banned) in sorted(marks.items()):
        what = "418 IP ban" if banned else "429 rate limit"
        until = datetime.fromtimestamp(until_ms / 1000, tz=UTC)
        accounts = _accounts_on(name)
        shown = ", ".join(accounts[:5]) + (f" and {len(accounts) - 5} more" if len(accounts) > 5 else "")
        yield Cause(
            key=f"egress_limited:{name}"[:191],
            kind="egress_limited",
            message=f"{what} on egress {name} until {until:%H:%M:%S} UTC: every account on it waits"
            + (f" (accounts {shown})" if shown else ""),
            account_name=accounts[0] if len(accounts) == 1 else "",
            admin_path=_admin("trades_account_changelist"),
        )


def _health(check: Callable[[], tuple[bool, dict]], key: str, what: str, admin_path: str) -> Iterator[Cause]:
    ok, details = check()
    if ok:
        return
    error = details.get("error") or (f"last ran {details.get('age_sec')} s ago (limit {details.get('max_age_sec')} s)")
    yield Cause(key=key, kind=key, message=f"{what}: {error}", admin_path=admin_path)


def stale_schedules() -> Iterator[Cause]:
    from reconciliation.health.checks import check_beat, check_workers

    yield from _health(
        check_beat,
        "beat_stale",
        "celery beat is not running the reconcile schedule",
        _admin("django_celery_beat_periodictask_changelist"),
    )
    yield from _health(
        check_workers,
        "workers_stale",
        "no Celery worker is running the scheduled tasks",
        _admin("django_celery_beat_periodictask_changelist"),
    )


def reconciles_stopped_early() -> Iterator[Cause]:
    """Accounts whose last ALERT_STOPPED_EARLY_RUNS pending reconciles (skipped ones aside) all stopped early."""
    runs = settings.ALERT_STOPPED_EARLY_RUNS
    if runs <= 0:
        return
    kinds = [ReconcileRun.Kind.PENDING, ReconcileRun.Kind.DEEP]
    candidates = (
        ReconcileRun.objects.filter(
            kind__in=kinds,
            outcome=ReconcileRun.Outcome.PARTIAL,
            started_at__gte=timezone.now() - timedelta(days=1),
            account__is_active=True,
        )
        .values("account_id")
        .annotate(n=Count("pk"))
        .filter(n__gte=runs)
        .values_list("account_id", flat=True)
    )
    for account in Account.objects.filter(pk__in=list(candidates)).order_by("name"):
        last = list(
            ReconcileRun.objects.filter(account=account, kind__in=kinds)
            .exclude(outcome=ReconcileRun.Outcome.SKIPPED)
            .order_by("-started_at", "-pk")[:runs]
        )
        if len(last) < runs or any(run.outcome != ReconcileRun.Outcome.PARTIAL for run in last):
            continue
        weight = (last[0].report or {}).get("weight_used")
        yield Cause(
            key=f"reconcile_stopped_early:{account.pk}",
            kind="reconcile_stopped_early",
            message=f"the last {runs} reconciles of account {account.name} stopped early (weight budget or a rate "
            f"limit; last used weight {weight}): its pending trades are checked late",
            account_name=account.name,
            admin_path=_admin("reconciliation_reconcilerun_changelist") + f"?account__id__exact={account.pk}",
        )


CORRECTED_FROM = (Trade.Status.FAILED, Trade.Status.CANCELLED)


def corrections(now: datetime | None = None) -> Iterator[Cause]:
    """TradeEvents that took a failed or cancelled trade to another status (reconciliation's "corrected": Binance
    showed the order filled or working). One-shot: an event, not a condition."""
    since = (now or timezone.now()) - timedelta(seconds=settings.ALERT_CORRECTION_LOOKBACK_SEC)
    events = (
        TradeEvent.objects.filter(created_at__gte=since, from_status__in=CORRECTED_FROM)
        .exclude(to_status__in=CORRECTED_FROM)
        .exclude(to_status="")
        .select_related("trade__account")
        .order_by("pk")[:MAX_PER_KIND]
    )
    for event in events:
        trade = event.trade
        yield Cause(
            key=f"correction:{event.pk}",
            kind="correction",
            message=f"trade {trade.pk} ({trade.symbol} {trade.side} {_qty(trade.quantity)}) of account "
            f"{trade.account.name} was {event.from_status} and is now {event.to_status} ({event.source}): "
            "Binance shows its order filled or working",
            account_name=trade.account.name,
            trade_id=trade.pk,
            admin_path=_admin("trades_trade_change", trade.pk),
            one_shot=True,
        )


SOURCES: list[Callable[[], Iterator[Cause]]] = [
    flagged_trades,
    open_orphans,
    down_streams,
    limited_egresses,
    stale_schedules,
    reconciles_stopped_early,
    corrections,
]


def current_causes() -> tuple[dict[str, Cause], set[str]]:
    """Every current cause by key, and the kinds whose source failed to read (their alerts are left as they are:
    a failing read is not a cleared cause)."""
    causes: dict[str, Cause] = {}
    failed: set[str] = set()
    for source in SOURCES:
        try:
            for cause in source():
                causes[cause.key] = cause
        except Exception:
            logger.exception("alerts: reading %s failed", source.__name__)
            failed.update(KINDS_OF[source.__name__])
    return causes, failed


KINDS_OF = {
    "flagged_trades": {"trade_flagged"},
    "open_orphans": {"orphan"},
    "down_streams": {"stream_down"},
    "limited_egresses": {"egress_limited"},
    "stale_schedules": {"beat_stale", "workers_stale"},
    "reconciles_stopped_early": {"reconcile_stopped_early"},
    "corrections": {"correction"},
}
