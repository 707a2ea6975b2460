"""The pending reconcile: every pending trade of an account brought in line with Binance's order state, within a
weight budget, under the account's lease (leases.py), with its report (reports.py); then the due not-found
re-checks (orders/rechecks.py)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import ExchangeError, RateLimited
from trades.models import Account, Trade, TradeEvent

from ..gateway import gateway
from ..models import ReconcileRun
from ..orders import rechecks, rules
from ..orders.apply import apply_order_snapshot, fetch_order, flag_for_operator
from ..orders.results import Result
from ..orders.snapshots import WORKING, InvalidSnapshot, OrderSnapshot
from ..stream import guard as stream_guard
from .leases import account_lease
from .reports import Report

logger = logging.getLogger(__name__)

Source = TradeEvent.Source

ALL_ORDERS_SLACK = timedelta(minutes=5)  # our created_at precedes Binance's order time; allow for clock skew

WS_CONNECT = "ws_connect"  # the reason of the reconcile the user stream asks for on every (re)connect


def reconcile_pending(
    account: Account,
    *,
    reason: str = "manual",
    deep: bool = False,
    client: BinanceFuturesClient | None = None,
    actor: str = "",
) -> dict[str, Any]:
    """Bring every pending trade of the account in line with Binance's order state (the seed's
    `_reconcile_pending_with_binance`). `deep`: the pending trades older than RECONCILE_MAX_AGE_SEC instead.

    Weight ≈ S + min(N − k, 5·S) for N pending trades over S symbols, k of them still resting: per symbol, one
    openOrders (weight 1) when at least two of its trades last rested (their rows are their snapshots), then for the
    others one GET /fapi/v1/order each when few, one allOrders (weight 5) when many. The report's weight_used counts
    every request. DB queries do not grow with N (paged reads; writes only for trades that change).
    Stops early (report.stopped_early) when the account's used weight passes RECONCILE_WEIGHT_BUDGET or Binance
    rate-limits us; the caller reschedules. A second concurrent run for the account returns skipped=True at once.
    """
    kind = ReconcileRun.Kind.DEEP if deep else ReconcileRun.Kind.PENDING
    report = Report(account_id=account.pk, kind=kind, reason=reason, actor=actor)

    def work(client: BinanceFuturesClient) -> None:
        reconcile_pending_locked(account, client, report, deep=deep)
        if reason == WS_CONNECT and not report.missed_events and not report.stopped_early:
            # A stream marked deaf, reconnected: this reconcile found nothing its new socket missed.
            stream_guard.clear_deaf_after_reconnect(account.pk, reconcile_started_at=report.started_at)

    return run_under_lease(account, report, client, work, priority=egress.DEEP if deep else egress.RECONCILE)


def run_under_lease(
    account: Account,
    report: Report,
    client: BinanceFuturesClient | None,
    work: Callable[[BinanceFuturesClient], None],
    *,
    priority: str = egress.RECONCILE,
) -> dict[str, Any]:
    """Run work(client) holding the account's lease; a busy lease means skipped. Rate limiting stops the run early
    (the report says when to retry); the report is kept (ReconcileRun) and returned as a dict."""
    with account_lease(account.pk) as held:
        if not held:
            report.skipped = True
            return report.finish()
        with gateway(account, client, priority=priority) as client:
            calls_before = client.http_calls
            try:
                work(client)
            except RateLimited as exc:
                report.stopped_early, report.retry_after = True, exc.retry_after
                logger.warning("account %s: rate limited, stopping; retry after %ss", account.pk, exc.retry_after)
            finally:
                report.http_calls = client.http_calls - calls_before
            return report.finish(used_weight=client.used_weight)


def reconcile_pending_locked(
    account: Account, client: BinanceFuturesClient, report: Report, *, deep: bool = False
) -> None:
    """The reconcile itself; the caller holds the account lease."""
    by_symbol: dict[str, list[Trade]] = defaultdict(list)
    for trade in _pending_trades(account, deep=deep):
        by_symbol[trade.symbol].append(trade)
    for symbol, trades in sorted(by_symbol.items()):
        if _over_budget(client, report):
            return
        if _worth_open_orders(trades):
            rest = _reconcile_symbol_by_open_orders(client, symbol, trades, report)
            if rest is None:
                return
            trades = rest
        if len(trades) > settings.RECONCILE_PER_ORDER_MAX:
            _reconcile_symbol_by_all_orders(client, symbol, trades, report)
            continue
        for trade in trades:
            if _over_budget(client, report):
                return
            _reconcile_by_order(client, trade, report, source=Source.RECONCILE)
    if not deep:
        _recheck_not_found(account, client, report)


def _recheck_not_found(account: Account, client: BinanceFuturesClient, report: Report) -> None:
    """Look up again, one GET each (weight 1, counted in the report), the account's trades failed as "not found on
    exchange" whose re-check is due (orders/rechecks.py); an order that shows up is applied by the one rule, which corrects
    the trade. After the pending trades: they are the more urgent."""
    for trade in rechecks.due_not_found_rechecks(account.pk, limit=settings.RECONCILE_PAGE_SIZE):
        if _over_budget(client, report):
            return
        claim = rechecks.claim_not_found_recheck(trade)
        if claim is None:
            continue
        report.rechecked += 1
        calls_before = client.http_calls
        try:
            order = fetch_order(client, trade)
        except RateLimited:
            rechecks.release_not_found_recheck(trade, claim)
            raise
        except (ExchangeError, LookupError) as exc:
            report.errors += 1
            logger.warning("trade %s: not-found re-check %d failed: %s", trade.pk, claim.after[0], exc)
            continue
        finally:
            report.weight_used += client.http_calls - calls_before
        result = _apply(trade, order, report, source=Source.RECONCILE)
        if result == rules.REOPENED:
            logger.warning(
                "trade %s: order found on exchange at re-check %d after it was failed as %r; corrected to "
                "%s: account=%s client_order_id=%s",
                trade.pk,
                claim.after[0],
                rules.NOT_FOUND_REASON,
                trade.status,
                trade.account_id,
                trade.client_order_id,
            )


def _pending_trades(account: Account, *, deep: bool) -> Iterator[Trade]:
    max_age = settings.RECONCILE_MAX_AGE_SEC
    if deep:
        cutoff = timezone.now() - timedelta(seconds=max_age)
        yield from Trade.objects.pending().filter(account=account, created_at__lt=cutoff).order_by("created_at", "pk")
        return
    page_size, last = settings.RECONCILE_PAGE_SIZE, None
    while True:
        page = Trade.objects.get_pending_recent(account.pk, limit=page_size, max_age_sec=max_age, before=last)
        yield from page
        if len(page) < page_size:
            return
        last = page[-1]


def _over_budget(client: BinanceFuturesClient, report: Report) -> bool:
    if client.used_weight >= settings.RECONCILE_WEIGHT_BUDGET:
        if not report.stopped_early:
            logger.warning(
                "account %s: used weight %s ≥ budget %s, stopping early",
                report.account_id,
                client.used_weight,
                settings.RECONCILE_WEIGHT_BUDGET,
            )
        report.stopped_early = True
        report.retry_after = report.retry_after or 60
        return True
    return False


def _worth_open_orders(trades: list[Trade]) -> bool:
    """One openOrders (weight 1) pays for itself when at least two of the symbol's trades are expected to rest: each
    one found there saves its own look-up. A trade Binance last showed working (NEW, PARTIALLY_FILLED) is expected
    to; one never placed or still being placed is not, and is looked up as before."""
    return sum(1 for trade in trades if trade.exchange_status in WORKING) >= 2


def _reconcile_symbol_by_open_orders(
    client: BinanceFuturesClient, symbol: str, trades: list[Trade], report: Report
) -> list[Trade] | None:
    """GET /fapi/v1/openOrders?symbol= (weight 1): each trade whose order is in the list still rests, and the row is
    its snapshot (status, executedQty, avgPrice: a partial fill is recorded). Returns the trades not in the list,
    which need a look-up of their own: an order that ended (filled, cancelled, expired), one never placed, or one
    Binance does not show yet (-2013 right after placing) — the look-up, not its absence here, decides those. None
    when over the weight budget. A failed openOrders costs nothing else: every trade is looked up as before."""
    calls_before = client.http_calls
    try:
        orders = client.get_open_orders(symbol)
    except RateLimited:
        raise
    except ExchangeError as exc:
        logger.warning("account %s: openOrders %s failed: %s; looking each order up", report.account_id, symbol, exc)
        return trades
    finally:
        report.weight_used += client.http_calls - calls_before
    if not isinstance(orders, list):
        logger.warning(
            "account %s: openOrders %s answered %.200r; looking each order up", report.account_id, symbol, orders
        )
        return trades
    by_client_id = {o.get("clientOrderId"): o for o in orders if isinstance(o, dict) and o.get("clientOrderId")}
    by_order_id = {o.get("orderId"): o for o in orders if isinstance(o, dict) and o.get("orderId") is not None}
    rest = []
    for trade in trades:
        order = by_client_id.get(trade.client_order_id) if trade.client_order_id else None
        order = order or (by_order_id.get(trade.entry_order_id) if trade.entry_order_id is not None else None)
        if order is None:
            rest.append(trade)
            continue
        report.checked += 1
        report.resting += 1
        _apply(trade, order, report, source=Source.RECONCILE)
    if _over_budget(client, report):
        return None
    return rest


def _reconcile_symbol_by_all_orders(
    client: BinanceFuturesClient, symbol: str, trades: list[Trade], report: Report
) -> None:
    start = min(trade.created_at for trade in trades) - ALL_ORDERS_SLACK
    calls_before = client.http_calls
    try:
        orders = client.get_all_orders(symbol, start_time=int(start.timestamp() * 1000))
    except RateLimited:
        raise
    except ExchangeError as exc:
        report.errors += len(trades)
        logger.warning("account %s: allOrders %s failed: %s", report.account_id, symbol, exc)
        return
    finally:
        report.weight_used += 5 * (client.http_calls - calls_before)
    by_client_id = {o.get("clientOrderId"): o for o in orders}
    by_order_id = {o.get("orderId"): o for o in orders}
    for trade in trades:
        order = by_client_id.get(trade.client_order_id) if trade.client_order_id else None
        order = order or (by_order_id.get(trade.entry_order_id) if trade.entry_order_id is not None else None)
        if order is None:
            # Not in the list (never placed, or not visible yet): ask for it alone, which answers -2013 precisely.
            _reconcile_by_order(client, trade, report, source=Source.RECONCILE)
        else:
            report.checked += 1
            _apply(trade, order, report, source=Source.RECONCILE)


def _reconcile_by_order(client: BinanceFuturesClient, trade: Trade, report: Report, *, source: str) -> None:
    report.checked += 1
    calls_before = client.http_calls
    try:
        order = fetch_order(client, trade)
    except RateLimited:
        raise
    except ExchangeError as exc:
        report.errors += 1
        logger.warning("trade %s: order look-up failed: %s", trade.pk, exc)
        return
    except LookupError:
        report.needs_operator += 1
        flag_for_operator(
            trade, reason="neither a client order id nor an order id to look up", source=source, actor=report.actor
        )
        return
    finally:
        report.weight_used += client.http_calls - calls_before  # weight 1 each; none without an order reference
    _apply(trade, order, report, source=source)


def _apply(trade: Trade, order: OrderSnapshot | dict[str, Any], report: Report, *, source: str) -> Result | None:
    try:
        result = apply_order_snapshot(trade, order, source, actor=report.actor)
    except (InvalidSnapshot, rules.SnapshotMismatch) as exc:
        report.errors += 1
        logger.error("trade %s: unusable order answer from Binance (%s): %.200r", trade.pk, exc, order)
        return None
    report.count(result)
    if report.stream_guard.observe(trade, result, source):
        report.missed_events += 1
    return result
