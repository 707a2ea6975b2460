"""What a position is, for the sync, the orphans and the operator: its key (symbol, position side), a trade's signed
exposure, Binance's positions (positionRisk) and what our trades explain of them."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db.models import Q

from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

Key = tuple[str, str]  # (symbol, positionSide)


def position_key(trade: Trade) -> Key:
    return trade.symbol, trade.position_side


def signed_qty(trade: Trade) -> Decimal:
    """The trade's exposure: its signed open quantity."""
    return trade.exposure


def exchange_positions(client: BinanceFuturesClient) -> dict[Key, tuple[Decimal, Decimal | None]]:
    """(symbol, positionSide) → (signed amount, entry price) for every non-zero position row."""
    positions: dict[Key, tuple[Decimal, Decimal | None]] = {}
    for row in client.get_positions():
        amount = Decimal(row["positionAmt"])
        if amount == 0:
            continue
        key = (row["symbol"], row.get("positionSide") or Trade.PositionSide.BOTH)
        held, _ = positions.get(key, (Decimal("0"), None))
        positions[key] = (held + amount, Decimal(row.get("entryPrice") or "0") or None)
    return positions


def explained_by_trades(account_id: int, key: Key | None = None) -> dict[Key, Decimal]:
    """(symbol, position side) → the signed open quantity our trades hold: open trades and partially filled pending
    ones."""
    explained: dict[Key, Decimal] = defaultdict(Decimal)
    explaining = Q(status=Trade.Status.OPEN) | Q(status=Trade.Status.PENDING, filled_qty__gt=0)
    trades = Trade.objects.filter(explaining, account_id=account_id)
    if key is not None:
        trades = trades.filter(symbol=key[0], position_side=key[1])
    for trade in trades:
        explained[position_key(trade)] += signed_qty(trade)
    return explained
