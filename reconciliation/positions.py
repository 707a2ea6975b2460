"""Position sync: DB open trades against Binance's positions (positionRisk, one-way mode).

- open trade, no exchange position for its symbol      → closed (exit price / realized PnL from userTrades)
- open trades explain the exchange position exactly    → in sync
- exchange position (or part) no trade explains        → an orphan record, logged at WARNING; turned into an open
                                                         trade only when SYNC_RECOVER_MISSING_POSITIONS is on, two
                                                         syncs in a row saw the same gap, this run checked every
                                                         pending trade and none is left on the symbol
Quantities are compared exactly, as Decimals: open trades and partially filled pending trades count, BUY as +,
SELL as −.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from trades.db import retry_transient_db_errors
from trades.exceptions import ExchangeError, RateLimited
from trades.models import Account, Trade, TradeEvent

from .models import OrphanPosition
from .reports import Report

logger = logging.getLogger(__name__)


def signed_qty(trade: Trade) -> Decimal:
    return trade.filled_qty if trade.side == Trade.Side.BUY else -trade.filled_qty


def exchange_positions(client) -> dict[str, tuple[Decimal, Decimal | None]]:
    """symbol → (signed amount, entry price) for every non-zero position."""
    positions: dict[str, tuple[Decimal, Decimal | None]] = {}
    for row in client.get_positions():
        amount = Decimal(row["positionAmt"])
        if amount == 0:
            continue
        held, _ = positions.get(row["symbol"], (Decimal("0"), None))
        positions[row["symbol"]] = (held + amount, Decimal(row.get("entryPrice") or "0") or None)
    return positions


def compare_positions(account: Account, client, report: Report) -> None:
    """The comparison itself; the caller holds the account lease and has reconciled pending trades first."""
    report.extra.update({"closed": 0, "in_sync": 0, "orphans": 0, "recovered": 0})
    # Only trades already open before Binance's positions are read can be closed by what it says: a trade the
    # stream opens while we read must not be closed by a snapshot that predates its fill (the soak caught this).
    open_by_symbol: dict[str, list[Trade]] = defaultdict(list)
    for trade in Trade.objects.filter(account=account, status=Trade.Status.OPEN):
        open_by_symbol[trade.symbol].append(trade)
    exchange = exchange_positions(client)
    report.weight_used += 5
    # What explains each position is read after Binance answered, so fills it already reflects count.
    explained = explained_by_trades(account.pk)
    # A symbol with a pending trade may have a fill on its way to the DB (or one this run could not check, or one
    # older than the reconcile's window): its gap is reported, never recovered automatically.
    pending_symbols = set(Trade.objects.pending().filter(account=account).values_list("symbol", flat=True))

    for symbol, trades in sorted(open_by_symbol.items()):
        if symbol not in exchange:
            exit_price, pnl = _closing_fills(client, trades, report)
            for trade in trades:
                if close_trade(trade, exit_price=exit_price, realized_pnl=pnl, actor=report.actor):
                    report.extra["closed"] += 1

    seen = set()
    for symbol, (amount, entry_price) in sorted(exchange.items()):
        unexplained = amount - explained.get(symbol, Decimal("0"))
        if unexplained == 0:
            report.extra["in_sync"] += 1
            continue
        seen.add(symbol)
        report.extra["orphans"] += 1
        orphan, seen_before = _record_orphan(account, symbol, unexplained, amount, entry_price)
        # Recovered only once the same gap is seen by two syncs in a row, with every pending trade checked and none
        # left on the symbol: a fill still on its way to the DB (the stream or a reconcile about to apply it) is not
        # an orphan, and recovering it would count it twice.
        if (settings.SYNC_RECOVER_MISSING_POSITIONS and seen_before and recoverable(unexplained, amount)
                and report.errors == 0 and symbol not in pending_symbols):
            try:
                recover_orphan(orphan, source=TradeEvent.Source.POSITION_SYNC)
            except ValueError as exc:  # the guards, re-checked now: e.g. a pending trade created since the read
                logger.info("account %s: orphan %s %s not recovered: %s", account.pk, symbol, unexplained, exc)
            else:
                report.extra["recovered"] += 1
    OrphanPosition.objects.filter(account=account, status=OrphanPosition.Status.OPEN).exclude(
        symbol__in=seen
    ).update(status=OrphanPosition.Status.RESOLVED, note="explained by trades again")


def explained_by_trades(account_id: int, symbol: str | None = None) -> dict[str, Decimal]:
    """symbol → the signed quantity our trades hold: open trades and partially filled pending ones."""
    explained: dict[str, Decimal] = defaultdict(Decimal)
    explaining = Q(status=Trade.Status.OPEN) | Q(status=Trade.Status.PENDING, filled_qty__gt=0)
    trades = Trade.objects.filter(explaining, account_id=account_id)
    if symbol is not None:
        trades = trades.filter(symbol=symbol)
    for trade in trades:
        explained[trade.symbol] += signed_qty(trade)
    return explained


def recoverable(unexplained: Decimal, amount: Decimal) -> bool:
    """A gap a new open trade can explain: the exchange holds more, on the same side, than our trades. (The other
    gaps mean our trades hold more than the exchange: an open trade to close or fix, not a trade to add.)"""
    return unexplained != 0 and (unexplained > 0) == (amount > 0) and abs(unexplained) <= abs(amount)


def _closing_fills(client, trades: list[Trade], report: Report):
    """Average exit price and realized PnL of the fills that closed the position, when one trade owned it."""
    if len(trades) != 1 or trades[0].opened_at is None:
        return None, None
    trade = trades[0]
    try:
        fills = client.get_user_trades(trade.symbol, start_time=int(trade.opened_at.timestamp() * 1000))
    except RateLimited:
        raise
    except ExchangeError as exc:
        logger.warning("trade %s: userTrades unavailable (%s); closing without exit price", trade.pk, exc)
        return None, None
    finally:
        report.weight_used += 5
    closing_side = Trade.Side.SELL if trade.side == Trade.Side.BUY else Trade.Side.BUY
    closing = [f for f in fills if f.get("side") == closing_side]
    qty = sum((Decimal(f["qty"]) for f in closing), Decimal("0"))
    if not qty:
        return None, None
    notional = sum((Decimal(f["price"]) * Decimal(f["qty"]) for f in closing), Decimal("0"))
    pnl = sum((Decimal(f.get("realizedPnl") or "0") for f in closing), Decimal("0"))
    return (notional / qty).quantize(Decimal("1e-10")), pnl


@retry_transient_db_errors
def close_trade(trade: Trade, *, exit_price=None, realized_pnl=None, source=TradeEvent.Source.POSITION_SYNC,
                actor: str = "", reason: str = "no exchange position", status_reason: str | None = None) -> bool:
    """open → closed: Binance holds no position for the trade's symbol any more (or an operator closed it)."""
    changes = {"status": Trade.Status.CLOSED, "closed_at": timezone.now(), "exit_price": exit_price,
               "realized_pnl": realized_pnl}
    if status_reason is not None:
        changes["status_reason"] = status_reason[:255]
    payload = {"reason": reason,
               "exit_price": None if exit_price is None else str(exit_price),
               "realized_pnl": None if realized_pnl is None else str(realized_pnl)}
    updated = Trade.objects.compare_and_set(
        {"pk": trade.pk}, expected_status=Trade.Status.OPEN, changes=changes, source=source, payload=payload,
        actor=actor,
    )
    if updated is None:
        return False
    trade.status, trade.closed_at = updated.status, updated.closed_at
    logger.info("trade %s closed: account=%s symbol=%s %s", trade.pk, trade.account_id, trade.symbol, reason)
    return True


def _record_orphan(account, symbol, unexplained, amount, entry_price) -> tuple[OrphanPosition, bool]:
    """The open orphan record for this gap, and whether the previous sync had already seen the same gap."""
    now = timezone.now()
    orphan = OrphanPosition.objects.filter(account=account, symbol=symbol, status=OrphanPosition.Status.OPEN).first()
    seen_before = orphan is not None and orphan.quantity == unexplained
    if orphan is None:
        orphan = OrphanPosition.objects.create(
            account=account, symbol=symbol, quantity=unexplained, exchange_position=amount, entry_price=entry_price,
        )
    else:
        orphan.quantity, orphan.exchange_position, orphan.entry_price, orphan.last_seen_at = (
            unexplained, amount, entry_price, now)
        orphan.save(update_fields=["quantity", "exchange_position", "entry_price", "last_seen_at"])
    logger.warning("account %s: orphan position %s %s (exchange %s) — no trade explains it",
                   account.pk, symbol, unexplained, amount)
    return orphan, seen_before


@transaction.atomic
def recover_orphan(orphan: OrphanPosition, *, source: str, actor: str = "") -> Trade:
    """Turn an orphan into an open trade (explicitly, or by SYNC_RECOVER_MISSING_POSITIONS), with its audit event."""
    orphan = OrphanPosition.objects.select_for_update().get(pk=orphan.pk)
    if orphan.status != OrphanPosition.Status.OPEN:
        raise ValueError(f"orphan {orphan.pk} is {orphan.status}, not open")
    if not recoverable(orphan.quantity, orphan.exchange_position):
        raise ValueError(f"our trades hold more {orphan.symbol} than the exchange ({orphan.exchange_position}): "
                         "close or fix those trades instead")
    if Trade.objects.pending().filter(account_id=orphan.account_id, symbol=orphan.symbol).exists():
        raise ValueError(f"pending {orphan.symbol} trades may explain it once their fills land: reconcile first")
    now_unexplained = orphan.exchange_position - explained_by_trades(orphan.account_id, orphan.symbol)[orphan.symbol]
    if now_unexplained != orphan.quantity:
        raise ValueError(f"our {orphan.symbol} trades changed since the position sync that saw it: sync again")
    now = timezone.now()
    qty = abs(orphan.quantity)
    trade = Trade.objects.create(
        account_id=orphan.account_id, symbol=orphan.symbol,
        side=Trade.Side.BUY if orphan.quantity > 0 else Trade.Side.SELL,
        quantity=qty, filled_qty=qty, entry_price=orphan.entry_price, status=Trade.Status.OPEN,
        status_reason="recovered from an orphan exchange position", opened_at=now, client_order_id=None,
    )
    TradeEvent.objects.create(
        trade=trade, created_at=now, source=source, from_status="", to_status=Trade.Status.OPEN, filled_qty=qty,
        payload={"recovered_orphan": orphan.pk, "exchange_position": str(orphan.exchange_position)}, actor=actor,
    )
    orphan.status, orphan.trade, orphan.note = OrphanPosition.Status.RECOVERED, trade, f"recovered by {actor or source}"
    orphan.save(update_fields=["status", "trade", "note"])
    logger.warning("account %s: orphan %s %s recovered as trade %s", orphan.account_id, orphan.symbol, qty, trade.pk)
    return trade
