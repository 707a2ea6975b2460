"""Exposure per account: Binance's position at the last sync next to what our trades hold, per (symbol, side).

`record_exchange_positions` keeps what a position sync read (`ExchangePosition`, one row per non-flat (symbol,
position side), replaced per account in one transaction). `account_exposure` joins those rows with the signed open
quantity of our trades (open ones and partially filled pending ones, as `positions.explained_by_trades` counts them)
and the open orphans: the rows of the desk's exposure page. Reads the database only; never calls Binance.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Max, Q

from trades.models import Account, Trade

from ..models import AccountSyncState, ExchangePosition, OrphanPosition

Key = tuple[str, str]  # (symbol, positionSide)
ZERO = Decimal("0")


@transaction.atomic
def record_exchange_positions(
    account: Account, positions: dict[Key, tuple[Decimal, Decimal | None]], synced_at: datetime
) -> None:
    """Replace the account's ExchangePosition rows with `positions` ((symbol, side) → (signed amount, entry price),
    as `positions.exchange_positions` returns them): sides that went flat lose their row."""
    ExchangePosition.objects.filter(account=account).delete()
    ExchangePosition.objects.bulk_create(
        [
            ExchangePosition(
                account=account,
                symbol=symbol,
                position_side=side,
                quantity=amount,
                entry_price=entry_price,
                synced_at=synced_at,
            )
            for (symbol, side), (amount, entry_price) in sorted(positions.items())
            if amount != 0
        ]
    )


@dataclass(frozen=True)
class ExposureRow:
    symbol: str
    position_side: str
    exchange_qty: Decimal  # Binance's signed position at the last sync (0: none)
    entry_price: Decimal | None
    ours: Decimal  # the signed open quantity of our trades
    trade_count: int
    confirmed_at: datetime | None  # when Binance's read behind exchange_qty was made
    orphan: OrphanPosition | None  # the open orphan on this (symbol, side), if any

    @property
    def difference(self) -> Decimal:
        return self.exchange_qty - self.ours

    @property
    def in_sync(self) -> bool:
        return self.difference == 0


def _ours(account_id: int) -> tuple[dict[Key, Decimal], dict[Key, int]]:
    """One query: (symbol, side) → signed open quantity of our trades, and how many trades hold it. Summed in Python
    as Decimals (SQLite would sum money as floats)."""
    held: dict[Key, Decimal] = defaultdict(Decimal)
    counts: dict[Key, int] = defaultdict(int)
    explaining = Q(status=Trade.Status.OPEN) | Q(status=Trade.Status.PENDING, filled_qty__gt=0)
    rows = Trade.objects.filter(explaining, account_id=account_id).values_list(
        "symbol", "position_side", "side", "filled_qty", "closed_qty"
    )
    for symbol, position_side, side, filled, closed in rows:
        open_qty = filled - closed
        held[(symbol, position_side)] += open_qty if side == Trade.Side.BUY else -open_qty
        counts[(symbol, position_side)] += 1
    return held, counts


def positions_read_at(account: Account) -> datetime | None:
    """When Binance's positions were last read for the account: its newest ExchangePosition row, else (every side
    flat) the last position sync's finish."""
    newest = ExchangePosition.objects.filter(account=account).aggregate(at=Max("synced_at"))["at"]
    if newest is not None:
        return newest
    return AccountSyncState.objects.filter(account=account).values_list("last_position_sync_at", flat=True).first()


def account_exposure(account: Account) -> list[ExposureRow]:
    """Every (symbol, side) where Binance held a position at the last sync, our trades hold something, or an orphan
    is open; sorted by symbol and side. A side Binance showed flat is confirmed at `positions_read_at`."""
    exchange = {
        (p.symbol, p.position_side): p for p in ExchangePosition.objects.filter(account=account).order_by("symbol")
    }
    ours, counts = _ours(account.pk)
    orphans = {
        (o.symbol, o.position_side): o
        for o in OrphanPosition.objects.filter(account=account, status=OrphanPosition.Status.OPEN).order_by(
            "last_seen_at"
        )
    }
    flat_read_at = positions_read_at(account)
    rows = []
    for key in sorted(set(exchange) | {k for k, v in ours.items() if v != 0 or counts[k]} | set(orphans)):
        position = exchange.get(key)
        rows.append(
            ExposureRow(
                symbol=key[0],
                position_side=key[1],
                exchange_qty=position.quantity if position else ZERO,
                entry_price=position.entry_price if position else None,
                ours=ours.get(key, ZERO),
                trade_count=counts.get(key, 0),
                confirmed_at=position.synced_at if position else flat_read_at,
                orphan=orphans.get(key),
            )
        )
    return rows
