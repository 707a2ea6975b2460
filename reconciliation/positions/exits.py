"""Exits: fills that reduce a position our trades hold — a take-profit or stop (also one Binance's Algo service
triggered), a reduce-only order, or Binance closing the position itself (liquidation, ADL, a delisting settlement).

Applied from userTrades (the fills are the evidence), once each and in id order, to the open trades on that
(symbol, position side) oldest first, when Binance's position read differs from what the trades hold (a read that
lags, showing the position as it was, leaves them for a later sync). Each trade's `closed_qty` grows with one audit event; the trade
closes when nothing is left open. Its exit price and realized PnL are the weighted average and the sum over its
exit fills. Binance's own closes name themselves in the order's client id (User Data Streams, Event Order Update:
"autoclose-" liquidation, "adl_autoclose" ADL, "settlement_autoclose-" settlement); the trade's status_reason says
so, and they are never orphans.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal

from django.db.models import Max, Q
from django.utils import timezone

from trades.binance_client import BinanceFuturesClient
from trades.db import retry_transient_db_errors
from trades.exceptions import ExchangeError, RateLimited
from trades.models import Account, Trade, TradeEvent

from ..orders.results import PositionResult
from ..reconcile.reports import Report

logger = logging.getLogger(__name__)

FILLS_SLACK = timedelta(minutes=1)  # our placed_at / created_at vs Binance's fill times: clock skew
BINANCE_CLOSES = (("autoclose-", "liquidation"), ("adl_autoclose", "ADL"), ("settlement_autoclose-", "settlement"))


def binance_close_kind(client_order_id: str | None) -> str | None:
    """ "liquidation", "ADL" or "settlement" for an order Binance placed itself to close a position, else None."""
    for prefix, kind in BINANCE_CLOSES:
        if client_order_id and client_order_id.startswith(prefix):
            return kind
    return None


def apply_exit_fills(
    account: Account,
    client: BinanceFuturesClient,
    key: tuple[str, str],
    explained: Decimal,
    held: Decimal,
    report: Report,
) -> int:
    """Apply the exit fills not applied yet on `key` (see the module docstring), when Binance's read shows a
    position other than our trades' exposure there. Returns the trades changed.

    In id order, a SELL fill reduces the long trades (oldest first) and a BUY fill the short ones — in one-way mode
    a long and a short trade can be open together, netted, and exits on both sides hide behind a position that
    looks unchanged. What a fill closes beyond what the trades hold is left to be reported as an orphan."""
    if explained == held:
        return 0
    symbol, position_side = key
    holders = [
        t
        for t in Trade.objects.filter(
            account=account, symbol=symbol, position_side=position_side, status=Trade.Status.OPEN
        ).order_by("opened_at", "pk")
        if t.open_qty > 0
    ]
    if not holders:
        return 0
    fills = _exit_fills(account, client, key, holders, report=report)
    remaining = {t.pk: t.open_qty for t in holders}
    parts: dict[int, list[tuple[dict, Decimal]]] = defaultdict(list)
    for fill in fills:
        reduces_long = fill.get("side") == "SELL"
        left = Decimal(fill["qty"])
        for trade in holders:
            if left == 0:
                break
            if (trade.exposure > 0) != reduces_long:
                continue
            share = min(left, remaining[trade.pk])
            if share > 0:
                parts[trade.pk].append((fill, share))
                remaining[trade.pk] -= share
                left -= share
    if not parts:
        return 0
    kinds = _close_kinds(client, symbol, {f["orderId"] for ps in parts.values() for f, _ in ps}, report)
    changed = 0
    for trade in holders:
        if parts.get(trade.pk) and reduce_trade(trade, parts[trade.pk], kinds, actor=report.actor):
            changed += 1
            if trade.status == Trade.Status.CLOSED:
                report.extra[PositionResult.CLOSED] = report.extra.get(PositionResult.CLOSED, 0) + 1
    report.extra[PositionResult.REDUCED] = report.extra.get(PositionResult.REDUCED, 0) + changed
    return changed


def _exit_fills(
    account: Account, client: BinanceFuturesClient, key: tuple[str, str], holders: list[Trade], *, report: Report
) -> list[dict]:
    """Fills on `key` newer than any exit fill applied on it, other than our entries' own, oldest first."""
    symbol, position_side = key
    on_key = Trade.objects.filter(account=account, symbol=symbol, position_side=position_side)
    applied = on_key.aggregate(last=Max("exit_fill_id"))["last"] or 0
    since = min((t.placed_at or t.created_at) for t in holders)
    # A trade closed without its fills (by hand, or on two reads) took the exits before its close with it, and a
    # trade recovered from an orphan has no order whose fills could be told apart: fills before either must not be
    # applied to the trades still open.
    closed_blind = on_key.filter(
        status=Trade.Status.CLOSED, exit_fill_id__isnull=True, closed_at__isnull=False
    ).aggregate(last=Max("closed_at"))["last"]
    recovered = on_key.filter(entry_order_id__isnull=True).aggregate(last=Max("created_at"))["last"]
    cutoffs = [int(t.timestamp() * 1000) for t in (closed_blind, recovered) if t is not None]
    not_before = max(cutoffs, default=0)
    start = max(int((since - FILLS_SLACK).timestamp() * 1000), not_before - int(FILLS_SLACK.total_seconds() * 1000))
    calls_before = client.http_calls
    try:
        fills = client.get_user_trades_since(symbol, start)
    except RateLimited:
        raise
    except ExchangeError as exc:
        report.errors += 1
        logger.warning("account %s: userTrades %s unavailable (%s); exits not applied", account.pk, symbol, exc)
        return []
    finally:
        report.weight_used += 5 * (client.http_calls - calls_before)
    entries = set(
        Trade.objects.filter(account=account, symbol=symbol, entry_order_id__isnull=False).values_list(
            "entry_order_id", flat=True
        )
    )
    return [
        f
        for f in fills
        if int(f["id"]) > applied
        and int(f.get("time") or 0) > not_before
        and (f.get("positionSide") or Trade.PositionSide.BOTH) == position_side
        and f.get("orderId") not in entries
    ]


def _close_kinds(client: BinanceFuturesClient, symbol: str, order_ids: Iterable[int], report: Report) -> dict:
    """orderId → "liquidation" / "ADL" / "settlement" / None, from each order's client id (userTrades rows carry
    none). An order that cannot be read counts as an ordinary exit; the fills are applied all the same."""
    kinds = {}
    for order_id in sorted(order_ids):
        try:
            order = client.get_order(symbol, order_id)
        except RateLimited:
            raise
        except ExchangeError as exc:
            logger.warning("exit order %s %s not readable (%s)", symbol, order_id, exc)
            order = None
        finally:
            report.weight_used += 1
        kinds[order_id] = binance_close_kind((order or {}).get("clientOrderId"))
    return kinds


@retry_transient_db_errors
def reduce_trade(
    trade: Trade,
    parts: list[tuple[dict, Decimal]],
    kinds: dict,
    *,
    source: str = TradeEvent.Source.POSITION_SYNC,
    actor: str = "",
) -> bool:
    """closed_qty += the parts' quantity, exit price and PnL updated, closed when nothing is left: one
    compare-and-set on (open, closed_qty as read) with one audit event."""
    qty = sum((share for _, share in parts), Decimal("0"))
    notional = sum((Decimal(f["price"]) * share for f, share in parts), Decimal("0"))
    pnl = sum((Decimal(f.get("realizedPnl") or "0") * share / Decimal(f["qty"]) for f, share in parts), Decimal("0"))
    closed = trade.closed_qty + qty
    previous = (trade.exit_price or Decimal("0")) * trade.closed_qty
    by_binance = sorted(kind for kind in {kinds.get(f["orderId"]) for f, _ in parts} if kind is not None)
    changes = {
        "closed_qty": closed,
        "exit_price": ((previous + notional) / closed).quantize(Decimal("1e-10")),
        "realized_pnl": (trade.realized_pnl or Decimal("0")) + pnl.quantize(Decimal("1e-10")),
        "exit_fill_id": max(int(f["id"]) for f, _ in parts),
    }
    done = closed >= trade.filled_qty
    if done:
        changes.update(status=Trade.Status.CLOSED, closed_at=timezone.now(), position_gone_at=None)
    if by_binance:
        changes["status_reason"] = f"{'closed' if done else 'partly closed'} by {' and '.join(by_binance)}"
    elif done:
        changes["status_reason"] = "closed by exit fills"
    payload = {
        "reason": changes.get("status_reason", "partly closed by exit fills"),
        "closed": str(qty),
        "closed_qty": str(closed),
        "fills": [int(f["id"]) for f, _ in parts],
        "orders": sorted({int(f["orderId"]) for f, _ in parts}),
        "by_binance": by_binance,
        "exit_price": str(changes["exit_price"]),
        "realized_pnl": str(changes["realized_pnl"]),
    }
    updated = Trade.objects.compare_and_set(
        {"pk": trade.pk},
        expected_status=Trade.Status.OPEN,
        changes=changes,
        source=source,
        condition=Q(closed_qty=trade.closed_qty),
        payload=payload,
        actor=actor,
    )
    if updated is None:
        return False
    for f in Trade._meta.concrete_fields:
        setattr(trade, f.attname, getattr(updated, f.attname))
    # Binance closing a position itself (liquidation above all) is news for an operator: WARNING.
    logger.log(
        logging.WARNING if by_binance else logging.INFO,
        "trade %s %s: account=%s %s %s closed %s of %s",
        trade.pk,
        payload["reason"],
        trade.account_id,
        trade.symbol,
        trade.position_side,
        closed,
        trade.filled_qty,
    )
    return True
