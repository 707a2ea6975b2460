"""The first step of the bot's entry: the pending trade, created idempotently on its client order id."""

from __future__ import annotations

from decimal import Decimal

from django.db import IntegrityError, transaction

from trades.binance_client import new_client_order_id
from trades.models import Account, Trade


def create_pending_trade(
    account: Account,
    symbol: str,
    side: str,
    quantity: Decimal,
    price: Decimal | None = None,
    *,
    client_order_id: str | None = None,
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
    account: Account,
    symbol: str,
    side: str,
    quantity: Decimal,
    price: Decimal | None = None,
    *,
    client_order_id: str | None = None,
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
