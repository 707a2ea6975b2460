"""Keeping trades true to Binance. Every path that learns an order's state — the WebSocket, the placement answer,
the periodic reconcile, the post-cancel verification, an admin action — calls `apply_order_snapshot`; the rule it
applies lives in `rules.py`. Services take model instances, talk to Binance through `BinanceFuturesClient`, and
never import an interface (tasks, admin, commands, the stream).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from trades import egress
from trades.binance_client import BinanceFuturesClient, new_client_order_id
from trades.db import db_now, retry_transient_db_errors
from trades.exceptions import (
    ClockSkew,
    ExchangeError,
    RateLimited,
    TransientExchangeError,
    UnknownOrder,
)
from trades.models import Account, Trade, TradeEvent

from . import rechecks, rules, stream_guard
from .deadlines import cancel_entry_at_deadline, cancel_overdue_entries
from .leases import account_lease
from .models import ReconcileRun
from .position_mode import POSITION_SIDE_MISMATCH, entry_position_side, is_hedge_mode
from .positions import compare_positions
from .reports import Report
from .snapshots import NOT_FOUND, PLACING, WORKING, InvalidSnapshot, OrderSnapshot

logger = logging.getLogger(__name__)

Source = TradeEvent.Source
ALL_ORDERS_SLACK = timedelta(minutes=5)  # our created_at precedes Binance's order time; allow for clock skew
DUPLICATE_CLIENT_ORDER_ID_CODES = frozenset({-4116, -4015})  # "the order may exist already": never failed
WS_CONNECT = "ws_connect"  # the reason of the reconcile the user stream asks for on every (re)connect


@contextmanager
def gateway(account: Account, client=None, *, priority: str = egress.RECONCILE):
    """The client a caller passed in (theirs to close), or the account's own for this block, closed after it.
    `priority`: which share of the egress IP's weight budget the calls may use (trades/egress.py)."""
    if client is not None:
        yield client
        return
    with BinanceFuturesClient.for_account(account, priority=priority) as own:
        yield own


# --- THE rule ---------------------------------------------------------------------------------------------------------


def apply_order_snapshot(trade: Trade, order, source: str, *, actor: str = "") -> str:
    """Make the state change Binance's view of this trade's order calls for (rules.py), compare-and-set, with one
    audit event. `order`: a REST order dict, a WebSocket ORDER_TRADE_UPDATE (or its `o`), or an OrderSnapshot.

    Returns the result name (rules.OPENED, rules.UNCHANGED, …). `trade` is updated in place. Raises InvalidSnapshot
    for a payload that is not an order and rules.SnapshotMismatch for another order's snapshot; changes nothing then.
    """
    snap = OrderSnapshot.parse(order)
    rules.check_same_order(trade, snap)
    grace = settings.PENDING_NOT_FOUND_GRACE_SEC
    for _ in range(3):  # lost a race to another path: re-read and decide again on the fresh row
        # A -2013 is judged against the grace on the database's clock (placed_at is taken on it): a worker whose own
        # clock jumped ahead must not skip the grace and fail a live order.
        now = db_now() if snap.status == NOT_FOUND else timezone.now()
        decision = rules.decide(trade, snap, now, grace_sec=grace, recheck_sec=settings.NOT_FOUND_RECHECK_SEC)
        if isinstance(decision, str):
            if decision == rules.NEEDS_OPERATOR:
                flag_for_operator(
                    trade, reason=f"Binance says {snap.status} for an order seen before", source=source, actor=actor
                )
            logger.debug("trade %s: %s from %s (%s)", trade.pk, decision, source, snap.status)
            return decision
        if _write(trade, decision, source, actor):
            logger.info(
                "trade %s %s: account=%s client_order_id=%s source=%s exchange=%s filled=%s status=%s",
                trade.pk,
                decision.result,
                trade.account_id,
                trade.client_order_id,
                source,
                snap.status,
                trade.filled_qty,
                trade.status,
            )
            return decision.result
        trade.refresh_from_db()
    logger.warning("trade %s: gave up applying %s from %s after repeated races", trade.pk, snap.status, source)
    return rules.UNCHANGED


@retry_transient_db_errors
def _write(trade: Trade, decision: rules.Decision, source: str, actor: str) -> bool:
    if decision.audited:
        updated = Trade.objects.compare_and_set(
            {"pk": trade.pk},
            expected_status=decision.expected_status,
            changes=decision.changes,
            source=source,
            condition=decision.condition,
            payload=decision.payload,
            actor=actor,
        )
        if updated is None:
            return False
        for f in Trade._meta.concrete_fields:
            setattr(trade, f.attname, getattr(updated, f.attname))
        return True
    query = Trade.objects.filter(pk=trade.pk, status=decision.expected_status)
    if decision.condition is not None:
        query = query.filter(decision.condition)
    if query.update(**decision.changes, updated_at=timezone.now()) != 1:
        return False
    for name, value in decision.changes.items():
        setattr(trade, name, value)
    return True


def flag_for_operator(trade: Trade, *, reason: str, source: str, actor: str = "") -> bool:
    """Mark a trade as needing a person (once), with the reason in its audit trail. Never changes its status."""
    updated = retry_transient_db_errors(Trade.objects.compare_and_set)(
        {"pk": trade.pk},
        expected_status=trade.status,
        changes={"needs_operator": True},
        source=source,
        condition=Q(needs_operator=False),
        payload={"flag": "needs_operator", "reason": reason},
        actor=actor,
    )
    if updated is None:
        return False
    trade.needs_operator = True
    logger.warning(
        "trade %s flagged for an operator: account=%s client_order_id=%s reason=%s",
        trade.pk,
        trade.account_id,
        trade.client_order_id,
        reason,
    )
    return True


# --- Pending reconcile ------------------------------------------------------------------------------------------------


def reconcile_pending(
    account: Account, *, reason: str = "manual", deep: bool = False, client=None, actor: str = ""
) -> dict:
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

    def work(client):
        reconcile_pending_locked(account, client, report, deep=deep)
        if reason == WS_CONNECT and not report.missed_events and not report.stopped_early:
            # A stream marked deaf, reconnected: this reconcile found nothing its new socket missed.
            stream_guard.clear_deaf_after_reconnect(account.pk, reconcile_started_at=report.started_at)

    return _run_under_lease(account, report, client, work, priority=egress.DEEP if deep else egress.RECONCILE)


def _run_under_lease(account: Account, report: Report, client, work, *, priority: str = egress.RECONCILE) -> dict:
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


def reconcile_pending_locked(account: Account, client, report: Report, *, deep: bool = False) -> None:
    """The reconcile itself; the caller holds the account lease."""
    by_symbol: dict[str, list[Trade]] = defaultdict(list)
    for trade in _pending_trades(account, deep=deep):
        by_symbol[trade.symbol].append(trade)
    for symbol, trades in sorted(by_symbol.items()):
        if _over_budget(client, report):
            return
        if _worth_open_orders(trades):
            trades = _reconcile_symbol_by_open_orders(client, symbol, trades, report)
            if trades is None:
                return
        if len(trades) > settings.RECONCILE_PER_ORDER_MAX:
            _reconcile_symbol_by_all_orders(client, symbol, trades, report)
            continue
        for trade in trades:
            if _over_budget(client, report):
                return
            _reconcile_by_order(client, trade, report, source=Source.RECONCILE)
    if not deep:
        _recheck_not_found(account, client, report)


def _recheck_not_found(account: Account, client, report: Report) -> None:
    """Look up again, one GET each (weight 1, counted in the report), the account's trades failed as "not found on
    exchange" whose re-check is due (rechecks.py); an order that shows up is applied by the one rule, which corrects
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


def _pending_trades(account: Account, *, deep: bool):
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


def _over_budget(client, report: Report) -> bool:
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


def _reconcile_symbol_by_open_orders(client, symbol: str, trades: list[Trade], report: Report) -> list[Trade] | None:
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


def _reconcile_symbol_by_all_orders(client, symbol: str, trades: list[Trade], report: Report) -> None:
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


def _reconcile_by_order(client, trade: Trade, report: Report, *, source: str) -> None:
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


def fetch_order(client, trade: Trade):
    """The trade's order as Binance has it, or a NOT_FOUND snapshot (-2013). LookupError: nothing to look up by."""
    if trade.client_order_id:
        order = client.get_order_by_client_order_id(trade.symbol, trade.client_order_id)
    elif trade.entry_order_id is not None:
        order = client.get_order(trade.symbol, trade.entry_order_id)
    else:
        raise LookupError("no order reference")
    if order is None:
        return OrderSnapshot.not_found(
            trade.symbol, order_id=trade.entry_order_id, client_order_id=trade.client_order_id
        )
    return order


def _apply(trade: Trade, order, report: Report, *, source: str) -> str | None:
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


# --- Position sync --------------------------------------------------------------------------------------------------


def sync_positions_with_binance(account: Account, *, reason: str = "beat", client=None, actor: str = "") -> dict:
    """Reconcile pending trades first (so fills they reveal count), then DB open trades vs Binance's positions
    (positions.py). One lease covers both."""
    report = Report(account_id=account.pk, kind=ReconcileRun.Kind.POSITIONS, reason=reason, actor=actor)

    def work(client):
        reconcile_pending_locked(account, client, report)
        if not report.stopped_early:
            compare_positions(account, client, report)

    return _run_under_lease(account, report, client, work, priority=egress.POSITIONS)


# --- Retention ------------------------------------------------------------------------------------------------------


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


# --- Cancel and verify ------------------------------------------------------------------------------------------------


def cancel_trade_order(trade: Trade, *, client=None, actor: str = "") -> dict:
    """Ask Binance to cancel the trade's order and apply its answer. -2011 (the order is not open: it may have just
    filled) is an expected outcome, not an error: the verification that always follows decides.

    A trade failed "not found" is cancelled too (by client order id): that inference can be wrong, and a cancel of
    an order that truly does not exist is a harmless -2011."""
    if trade.status != Trade.Status.PENDING and not rules.is_failed_not_found(trade):
        return {"trade_id": trade.pk, "outcome": "not_pending", "status": trade.status}
    if not trade.client_order_id and trade.entry_order_id is None:
        flag_for_operator(trade, reason="cannot cancel: no order reference", source=Source.CANCEL, actor=actor)
        return {"trade_id": trade.pk, "outcome": "no_order_ref"}
    try:
        with gateway(trade.account, client) as client:
            order = client.cancel_order(
                trade.symbol,
                client_order_id=trade.client_order_id or None,
                order_id=None if trade.client_order_id else trade.entry_order_id,
            )
    except UnknownOrder as exc:
        logger.info("trade %s: cancel answered -2011 (already filled/ended?): %s", trade.pk, exc)
        return {"trade_id": trade.pk, "outcome": "unknown_order"}
    result = apply_order_snapshot(trade, order, Source.CANCEL, actor=actor)
    return {"trade_id": trade.pk, "outcome": "cancelled", "result": result, "status": trade.status}


def verify_after_cancel(trade: Trade, *, client=None, actor: str = "", resend_cancel: bool = False) -> dict:
    """After a cancel (clean, raced by a fill, or failed): fetch the order again and apply it. `still_working`
    tells the caller Binance still shows it open (the cancel did not take); the task retries, then flags.

    `resend_cancel`: when the order is still working, send the cancel again now (the first one may never have
    reached Binance, e.g. lost to a database outage); its answer is applied like any cancel's, and the caller's next
    verification sees the outcome. A failing re-send is logged: the verification's verdict stands."""
    cancel_resent = False
    try:
        with gateway(trade.account, client, priority=egress.VERIFY) as client:
            snap = OrderSnapshot.parse(fetch_order(client, trade))
            result = apply_order_snapshot(trade, snap, Source.CANCEL_VERIFY, actor=actor)
            if snap.is_working and resend_cancel:
                try:
                    cancel_resent = cancel_trade_order(trade, client=client, actor=actor)["outcome"] != "not_pending"
                except ExchangeError as exc:
                    logger.warning("trade %s: cancel sent again after verification failed: %s", trade.pk, exc)
                else:
                    logger.info(
                        "trade %s: still %s on Binance after a cancel; cancel sent again", trade.pk, snap.status
                    )
    except LookupError:
        flag_for_operator(trade, reason="cannot verify: no order reference", source=Source.CANCEL_VERIFY, actor=actor)
        return {"trade_id": trade.pk, "result": rules.NEEDS_OPERATOR, "still_working": False, "status": trade.status}
    stream_guard.MissDetector(trade.account_id).observe(trade, result, Source.CANCEL_VERIFY)
    return {
        "trade_id": trade.pk,
        "result": result,
        "exchange_status": snap.status,
        "still_working": snap.is_working,
        "status": trade.status,
        "cancel_resent": cancel_resent,
    }


# --- The bot's entry flow -------------------------------------------------------------------------------------------


def create_pending_trade(
    account: Account, symbol: str, side: str, quantity, price=None, *, client_order_id: str | None = None
) -> Trade:
    """The first step of opening a position: a pending trade with a client order id Binance will carry (a fresh one
    when none, or "", is given)."""
    trade = Trade(
        account=account,
        symbol=symbol.upper(),
        side=side.upper(),
        quantity=quantity,
        price=price,
        client_order_id=client_order_id or new_client_order_id(),
    )
    trade.full_clean(exclude=["account"])
    trade.save()
    return trade


def get_or_create_pending_trade(
    account: Account, symbol: str, side: str, quantity, price=None, *, client_order_id: str | None = None
) -> tuple[Trade, bool]:
    """create_pending_trade, idempotent on the client order id: asked again for the same order under the same id (a
    redelivered task, a caller's retry), it returns the trade the first call created, as (trade, False). The same id
    with another symbol, side, quantity or price is a caller's bug: ValueError, never the other trade. An empty id
    ("") is no id: a fresh trade with a fresh id, as for None."""
    if not client_order_id:
        return create_pending_trade(account, symbol, side, quantity, price), True
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction stays usable after the duplicate
            return create_pending_trade(account, symbol, side, quantity, price, client_order_id=client_order_id), True
    except IntegrityError:
        existing = Trade.objects.filter(account=account, client_order_id=client_order_id).first()
        if existing is None:
            raise
    asked = (symbol.upper(), side.upper(), quantity, price)
    if asked != (existing.symbol, existing.side, existing.quantity, existing.price):
        raise ValueError(
            f"client_order_id {client_order_id!r} already belongs to trade {existing.pk} of account {account.pk} "
            f"({existing.symbol} {existing.side} {existing.quantity} @ {existing.price or 'MARKET'}), "
            f"not to {asked[0]} {asked[1]} {quantity} @ {price or 'MARKET'}"
        )
    return existing, False


def awaits_placement(trade: Trade) -> bool:
    """Pending and never sent: place_entry_order has not claimed it (its claim is what keeps it to one order)."""
    return trade.status == Trade.Status.PENDING and trade.exchange_status == ""


def place_entry_order(trade: Trade, *, client=None, deadline_sec: float | None = None) -> dict:
    """Send the trade's order to Binance once. An unknown outcome (timeout, 503 "Unknown error") leaves the trade
    pending for the reconcile to decide by client order id; only a definite refusal fails it.

    `deadline_sec`: the entry's wait. Its deadline (`cancel_after`, unless the trade has one) is stored in the same
    update that claims the placement, before the order is sent, so a live order always has one (deadlines.py)."""
    now = db_now()  # the not-found grace and the deadline run from here, on the database's clock (every worker's)
    claim = {"exchange_status": PLACING, "placed_at": now, "updated_at": now}
    if deadline_sec is not None and trade.cancel_after is None:
        claim["cancel_after"] = now + timedelta(seconds=max(deadline_sec, 0))
    claimed = Trade.objects.filter(pk=trade.pk, status=Trade.Status.PENDING, exchange_status="").update(**claim)
    if not claimed:
        # Already sent once (e.g. this task was re-delivered after a crash): never send a second order.
        return {"trade_id": trade.pk, "outcome": "already_attempted"}
    trade.exchange_status, trade.placed_at = PLACING, now
    trade.cancel_after = claim.get("cancel_after", trade.cancel_after)
    try:
        # The order's share of the budget for the whole entry: a position-mode read it needs first must not be
        # refused at a lower priority than the order it is for.
        with gateway(trade.account, client, priority=egress.ORDER) as client:
            order = _send_entry(trade, client)
    except _ModeUnknown as exc:  # nothing was sent: a definite no
        result = apply_order_snapshot(
            trade,
            OrderSnapshot.rejected_on_placement(
                trade.symbol, trade.client_order_id, exc.code, f"not sent: position mode unknown ({exc})"
            ),
            Source.PLACE,
        )
        return {"trade_id": trade.pk, "outcome": "rejected", "result": result}
    except RateLimited as exc:  # refused before execution: a definite no
        result = apply_order_snapshot(
            trade,
            OrderSnapshot.rejected_on_placement(
                trade.symbol, trade.client_order_id, exc.code, f"rate limited ({exc.status or 'not sent'})"
            ),
            Source.PLACE,
        )
        return {"trade_id": trade.pk, "outcome": "rejected", "result": result}
    except ClockSkew as exc:  # -1021 twice (the gateway re-synced and resent once): not executed, a definite no
        result = apply_order_snapshot(
            trade,
            OrderSnapshot.rejected_on_placement(
                trade.symbol, trade.client_order_id, exc.code, f"{exc.code}: {exc.message}"
            ),
            Source.PLACE,
        )
        return {"trade_id": trade.pk, "outcome": "rejected", "result": result}
    except TransientExchangeError as exc:
        logger.warning("trade %s: placement outcome unknown (%s); stays pending for reconcile", trade.pk, exc)
        return {"trade_id": trade.pk, "outcome": "unknown"}
    except ExchangeError as exc:
        if exc.code in DUPLICATE_CLIENT_ORDER_ID_CODES or exc.execution_unknown:
            logger.warning("trade %s: placement answered %s; stays pending for reconcile", trade.pk, exc)
            return {"trade_id": trade.pk, "outcome": "unknown"}
        result = apply_order_snapshot(
            trade,
            OrderSnapshot.rejected_on_placement(
                trade.symbol, trade.client_order_id, exc.code, f"{exc.code}: {exc.message}"
            ),
            Source.PLACE,
        )
        return {"trade_id": trade.pk, "outcome": "rejected", "result": result}
    result = apply_order_snapshot(trade, order, Source.PLACE)
    return {"trade_id": trade.pk, "outcome": "placed", "result": result, "status": trade.status}


class _ModeUnknown(Exception):
    def __init__(self, error: ExchangeError):
        super().__init__(str(error))
        self.code = error.code


def _send_entry(trade: Trade, client) -> dict:
    """POST the entry with the positionSide the account's mode asks for, recorded on the trade before it is sent.
    A -4061 means the mode changed under us (refused, nothing executed): re-read the mode and, if it did change,
    send once more under the same client order id."""
    for attempt in range(2):
        try:
            hedge = is_hedge_mode(trade.account, client, refresh=attempt > 0)
        except ExchangeError as exc:
            raise _ModeUnknown(exc) from None
        side = entry_position_side(trade.side, hedge)
        if side != trade.position_side:
            Trade.objects.filter(pk=trade.pk, status=Trade.Status.PENDING).update(position_side=side)
            trade.position_side = side
        elif attempt > 0:
            break  # the mode did not change: the refusal stands
        try:
            return client.place_order(
                trade.symbol,
                trade.side,
                trade.quantity,
                order_type="LIMIT" if trade.price else "MARKET",
                price=trade.price,
                client_order_id=trade.client_order_id,
                position_side=None if side == Trade.PositionSide.BOTH else side,
            )
        except ExchangeError as exc:
            if exc.code != POSITION_SIDE_MISMATCH or attempt > 0:
                raise
            logger.warning(
                "trade %s: Binance refused positionSide %s (-4061); re-reading the position mode", trade.pk, side
            )
            refused = exc
    raise refused


__all__ = [
    "apply_order_snapshot",
    "reconcile_pending",
    "sync_positions_with_binance",
    "verify_after_cancel",
    "cancel_trade_order",
    "flag_for_operator",
    "create_pending_trade",
    "get_or_create_pending_trade",
    "awaits_placement",
    "place_entry_order",
    "fetch_order",
    "prune_reconcile_runs",
    "gateway",
    "cancel_overdue_entries",
    "cancel_entry_at_deadline",
]
