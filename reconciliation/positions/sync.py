"""Position sync: DB open trades against Binance's positions (positionRisk), per (symbol, position side).

A position side is BOTH in one-way mode and LONG / SHORT in hedge mode; each (symbol, side) is compared on its own.
An open trade's exposure is its signed open quantity (filled − closed; BUY +, SELL −); a position is explained by
the sum over its open trades and partially filled pending ones, so one-way trades that net out (BUY 1, SELL 1: no
position) are consistent.

- Binance holds less than our trades on a (symbol, side)      → the exit fills behind it (exits.py) reduce the trades
                                                                (closed_qty), closing those with nothing left
- trades explain a (symbol, side) Binance holds nothing of,   → closed, but never on one read: positionRisk can lag
  and no exit fills explain it                                  the matching engine. Closed when a second read at
                                                                least POSITION_CONFIRM_SEC after the first still
                                                                finds nothing (a read in between that finds the
                                                                position starts over). A follow-up sync is asked
                                                                for.
- open trades explain the exchange position exactly          → in sync
- exchange position (or part) no trade explains              → an orphan record per (symbol, side), logged at
                                                                WARNING; turned into an open trade only when
                                                                SYNC_RECOVER_MISSING_POSITIONS is on, two syncs in a
                                                                row saw the same gap, this run checked every pending
                                                                trade and none is left on the symbol
Quantities are compared exactly, as Decimals. The periodic (beat) and a (re)connect's sync of an account the audit
trusts leave their pending reconcile to it (`pending_trusted`: why that is safe is said there).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.db import retry_transient_db_errors
from trades.exceptions import ExchangeError, RateLimited
from trades.models import Account, Trade, TradeEvent

from ..entries.position_mode import is_hedge_mode
from ..models import OrphanPosition, ReconcileRun
from ..orders.results import PositionResult
from ..reconcile.audit import audit_not_due
from ..reconcile.pending import reconcile_pending_locked, run_under_lease
from ..reconcile.reports import Report
from .exits import apply_exit_fills
from .exposure import Key, exchange_positions, explained_by_trades, position_key
from .last_sync import record_exchange_positions
from .orphans import recover_orphan, recoverable

logger = logging.getLogger(__name__)


def compare_positions(account: Account, client: BinanceFuturesClient, report: Report) -> None:
    """The comparison itself; the caller holds the account lease and has reconciled pending trades first."""
    report.extra.update(dict.fromkeys(PositionResult, 0))
    # Only trades already open before Binance's positions are read can be closed by what it says: a trade the
    # stream opens while we read must not be closed by a snapshot that predates its fill (the soak caught this).
    open_by_key: dict[Key, list[Trade]] = defaultdict(list)
    for trade in Trade.objects.filter(account=account, status=Trade.Status.OPEN):
        open_by_key[position_key(trade)].append(trade)
    _refresh_position_mode(account, client, report)
    exchange = exchange_positions(client)
    read_at = timezone.now()
    record_exchange_positions(account, exchange, read_at)  # what the desk's exposure page shows
    report.weight_used += 5
    # What explains each position is read after Binance answered, so fills it already reflects count.
    explained = explained_by_trades(account.pk)
    # A symbol with a pending trade may have a fill on its way to the DB (or one this run could not check, or one
    # older than the reconcile's window): its gap is reported, never recovered automatically.
    pending_symbols = set(Trade.objects.pending().filter(account=account).values_list("symbol", flat=True))

    # Exit fills first (take-profits, stops, liquidations, ADL, …): they explain a smaller position exactly. Not
    # while a pending trade on the symbol may have fills on their way to the DB: they would look like exits.
    if report.errors == 0:
        reduced = [
            key
            for key in sorted(open_by_key)
            if key[0] not in pending_symbols
            and apply_exit_fills(
                account,
                client,
                key,
                explained.get(key, Decimal("0")),
                exchange.get(key, (Decimal("0"), None))[0],
                report,
            )
        ]
        if reduced:
            explained = explained_by_trades(account.pk)
            ids = [t.pk for trades in open_by_key.values() for t in trades]
            open_by_key = defaultdict(list)
            for trade in Trade.objects.filter(pk__in=ids, status=Trade.Status.OPEN):
                open_by_key[position_key(trade)].append(trade)

    for key, trades in sorted(open_by_key.items()):
        if key not in exchange and explained.get(key, Decimal("0")) != 0:
            _close_when_confirmed(account, key, trades, explained[key], read_at, report)
        else:  # Binance shows the position (or our trades net out to none): any earlier "gone" read is void
            stale = [t.pk for t in trades if t.position_gone_at is not None]
            if stale:
                Trade.objects.filter(pk__in=stale).update(position_gone_at=None)

    seen: set[Key] = set()
    for key, (amount, entry_price) in sorted(exchange.items()):
        unexplained = amount - explained.get(key, Decimal("0"))
        if unexplained == 0:
            report.extra[PositionResult.IN_SYNC] += 1
            continue
        seen.add(key)
        report.extra[PositionResult.ORPHANS] += 1
        orphan, seen_before = _record_orphan(account, key, unexplained, amount, entry_price)
        # Recovered only once the same gap is seen by two syncs in a row, with every pending trade checked and none
        # left on the symbol: a fill still on its way to the DB (the stream or a reconcile about to apply it) is not
        # an orphan, and recovering it would count it twice.
        if (
            settings.SYNC_RECOVER_MISSING_POSITIONS
            and seen_before
            and recoverable(unexplained, amount)
            and report.errors == 0
            and not report.extra.get(PENDING_TRUSTED)
            and key[0] not in pending_symbols
        ):
            try:
                recover_orphan(orphan, source=TradeEvent.Source.POSITION_SYNC)
            except ValueError as exc:  # the guards, re-checked now: e.g. a pending trade created since the read
                logger.info("account %s: orphan %s %s not recovered: %s", account.pk, key, unexplained, exc)
            else:
                report.extra[PositionResult.RECOVERED] += 1
    for orphan in OrphanPosition.objects.filter(account=account, status=OrphanPosition.Status.OPEN):
        if (orphan.symbol, orphan.position_side) not in seen:
            OrphanPosition.objects.filter(pk=orphan.pk, status=OrphanPosition.Status.OPEN).update(
                status=OrphanPosition.Status.RESOLVED, note="explained by trades again"
            )


def _refresh_position_mode(account: Account, client: BinanceFuturesClient, report: Report) -> None:
    """Keep the account's position mode (shown in the admin, used by entries) no older than
    POSITION_MODE_REFRESH_SEC: one GET /fapi/v1/positionSide/dual (weight 30) an hour at most."""
    calls_before = client.http_calls
    try:
        is_hedge_mode(account, client)
    except RateLimited:
        raise
    except ExchangeError as exc:
        logger.warning("account %s: position mode not read (%s)", account.pk, exc)
    finally:
        report.weight_used += 30 * (client.http_calls - calls_before)


def _close_when_confirmed(
    account: Account, key: Key, trades: list[Trade], exposure: Decimal, read_at: datetime, report: Report
) -> None:
    """Binance's read shows nothing on `key` while our trades hold `exposure` there and no exit fills explain it:
    close them once a second read at least POSITION_CONFIRM_SEC after the first agrees."""
    confirm = timedelta(seconds=settings.POSITION_CONFIRM_SEC)
    first = [t for t in trades if t.position_gone_at is None]
    if first:  # the first read that finds it gone: remembered, confirmed by a later one
        Trade.objects.filter(pk__in=[t.pk for t in first], position_gone_at__isnull=True).update(
            position_gone_at=read_at
        )
        for trade in first:
            trade.position_gone_at = read_at
    if report.extra.get(PENDING_TRUSTED) or any(
        t.position_gone_at is not None and read_at - t.position_gone_at < confirm for t in trades
    ):  # a run that left the pending reconcile out never closes: the confirming sync reconciles first
        report.extra[PositionResult.UNCONFIRMED] += len(trades)
        report.extra["confirm_after"] = settings.POSITION_CONFIRM_SEC
        logger.info(
            "account %s: %s %s shows no position (trades %s hold %s); closing only if a read at least %ss later agrees",
            account.pk,
            *key,
            [t.pk for t in trades],
            exposure,
            settings.POSITION_CONFIRM_SEC,
        )
        return
    for trade in trades:
        if close_trade(trade, actor=report.actor, reason="no exchange position on two reads"):
            report.extra[PositionResult.CLOSED] += 1


@retry_transient_db_errors
def close_trade(
    trade: Trade,
    *,
    exit_price: Decimal | None = None,
    realized_pnl: Decimal | None = None,
    source: str = TradeEvent.Source.POSITION_SYNC,
    actor: str = "",
    reason: str = "no exchange position",
    status_reason: str | None = None,
) -> bool:
    """open → closed: Binance holds no position for the trade's symbol any more (or an operator closed it)."""
    changes = {
        "status": Trade.Status.CLOSED,
        "closed_at": timezone.now(),
        "exit_price": exit_price,
        "realized_pnl": realized_pnl,
        "position_gone_at": None,
    }
    if status_reason is not None:
        changes["status_reason"] = status_reason[:255]
    payload = {
        "reason": reason,
        "exit_price": None if exit_price is None else str(exit_price),
        "realized_pnl": None if realized_pnl is None else str(realized_pnl),
    }
    updated = Trade.objects.compare_and_set(
        {"pk": trade.pk},
        expected_status=Trade.Status.OPEN,
        changes=changes,
        source=source,
        payload=payload,
        actor=actor,
    )
    if updated is None:
        return False
    trade.status, trade.closed_at = updated.status, updated.closed_at
    logger.info("trade %s closed: account=%s symbol=%s %s", trade.pk, trade.account_id, trade.symbol, reason)
    return True


def _record_orphan(
    account: Account, key: Key, unexplained: Decimal, amount: Decimal, entry_price: Decimal | None
) -> tuple[OrphanPosition, bool]:
    """The open orphan record for this gap, and whether the previous sync had already seen the same gap."""
    now = timezone.now()
    symbol, side = key
    orphan = OrphanPosition.objects.filter(
        account=account, symbol=symbol, position_side=side, status=OrphanPosition.Status.OPEN
    ).first()
    seen_before = orphan is not None and orphan.quantity == unexplained
    if orphan is None:
        orphan = OrphanPosition.objects.create(
            account=account,
            symbol=symbol,
            position_side=side,
            quantity=unexplained,
            exchange_position=amount,
            entry_price=entry_price,
        )
    else:
        orphan.quantity, orphan.exchange_position, orphan.entry_price, orphan.last_seen_at = (
            unexplained,
            amount,
            entry_price,
            now,
        )
        orphan.save(update_fields=["quantity", "exchange_position", "entry_price", "last_seen_at"])
    logger.warning(
        "account %s: orphan position %s %s %s (exchange %s) — no trade explains it",
        account.pk,
        symbol,
        side,
        unexplained,
        amount,
    )
    return orphan, seen_before


PENDING_TRUSTED = "pending_trusted"  # report.extra: the pending reconcile was left to the audit (below)
# the periodic sync, and a (re)connect's once that connection's own reconcile ended ok (audit_not_due requires it)
TRUSTING_REASONS = frozenset({"beat", "ws_connect"})


def pending_trusted(account: Account, reason: str) -> bool:
    """The periodic (beat) or a (re)connect's position sync of an account whose pending trades the beat's audit
    trusts right now (audit.audit_not_due: healthy stream, an "ok" pending reconcile after the socket connected and
    within RECONCILE_AUDIT_SEC, no unconfirmed placement, no due re-check) leaves its own pending reconcile out: that
    reconcile already spent the weight, and the stream pushes every change since.

    Why compare_positions stays safe on that state: it never closes a trade on this read alone (a trade whose
    position is gone is only marked; the close comes from the "confirm_close" sync, which reconciles pending trades
    first); it applies no exit fills on a symbol with a pending trade; and an orphan is never recovered by a run that
    left the pending reconcile out. What stale pending state can do here is log an orphan or mark a trade, both
    re-judged by the next read. A reconnect's sync is trusted only after a reconcile that ended after the socket
    connected (the gap's fills are in); every other position sync asked for a reason (an ACCOUNT_UPDATE, a
    confirmation, an operator) reconciles first."""
    return reason in TRUSTING_REASONS and account.pk in audit_not_due([account.pk])


def sync_positions_with_binance(
    account: Account, *, reason: str = "beat", client: BinanceFuturesClient | None = None, actor: str = ""
) -> dict[str, Any]:
    """Reconcile pending trades first (so fills they reveal count; not when `pending_trusted`), then DB open trades
    vs Binance's positions (compare_positions). One lease covers both."""
    report = Report(account_id=account.pk, kind=ReconcileRun.Kind.POSITIONS, reason=reason, actor=actor)

    def work(client: BinanceFuturesClient) -> None:
        if pending_trusted(account, reason):
            report.extra[PENDING_TRUSTED] = True
        else:
            reconcile_pending_locked(account, client, report)
        if not report.stopped_early:
            compare_positions(account, client, report)

    return run_under_lease(account, report, client, work, priority=egress.POSITIONS)
