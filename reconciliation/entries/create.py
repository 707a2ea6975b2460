"""The first step of the bot's entry: the pending trade, created idempotently on its client order id, and
`open_position` (what the bot's in-process call and the open_position task both do: the trade, then its placement
enqueued on commit)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

from django.db import IntegrityError, transaction

from trades.binance_client import new_client_order_id
from trades.models import Account, Trade

logger = logging.getLogger(__name__)


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


def open_position(
    account: Account,
    symbol: str,
    side: str,
    quantity: Decimal | int | float | str,
    price: Decimal | int | float | str | None = None,
    *,
    timeout_sec: int | None = None,
    client_order_id: str | None = None,
    enqueue_placement: Callable[[int, int | None], object],
) -> Trade:
    """Create the pending trade (with a generated client order id unless given) and enqueue its placement once
    committed, by calling `enqueue_placement(trade_id, timeout_sec)` (the caller's: the place_entry_order task's
    delay; services never import tasks).

    price=None places a MARKET order. The trade id and client order id are known at once; the fill arrives by the
    WebSocket, the entry timeout's cancel-and-verify, or the periodic reconcile — whichever sees it first.

    Idempotent on client_order_id: asked again for the same order under the same id (a redelivered task, a caller's
    retry), it returns the existing trade and enqueues its placement again only if it was never sent
    (place_entry_order sends one order at most either way). The same id with another order raises ValueError.
    An empty client_order_id ("") counts as none.
    """
    client_order_id = client_order_id or None
    qty = Decimal(str(quantity))
    limit = None if price is None else Decimal(str(price))
    with transaction.atomic():
        trade, created = get_or_create_pending_trade(
            account,
            symbol,
            side,
            qty,
            limit,
            client_order_id=client_order_id,
        )
        place = created or awaits_placement(trade)
        if place:
            transaction.on_commit(lambda: enqueue_placement(trade.pk, timeout_sec))
    if not created:
        logger.info(
            "trade %s: open_position repeated for account=%s client_order_id=%s; existing %s trade returned, %s",
            trade.pk,
            account.pk,
            trade.client_order_id,
            trade.status,
            "placement enqueued again (never sent)" if place else "not placed again",
        )
    return trade
