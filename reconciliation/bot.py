"""What the bot calls, in-process (the same thing as the `open_position` task, for callers that share our DB)."""

import logging
from decimal import Decimal

from django.db import transaction

from trades.models import Account, Trade

from . import services, tasks

logger = logging.getLogger(__name__)


def open_position(
    account: Account,
    symbol: str,
    side: str,
    quantity,
    price=None,
    *,
    timeout_sec: int | None = None,
    client_order_id: str | None = None,
) -> Trade:
    """Create the pending trade (with a generated client order id unless given) and enqueue its placement once
    committed.

    price=None places a MARKET order. The trade id and client order id are known at once; the fill arrives by the
    WebSocket, the entry timeout's cancel-and-verify, or the periodic reconcile — whichever sees it first.

    Idempotent on client_order_id: asked again for the same order under the same id (a redelivered task, a caller's
    retry), it returns the existing trade and enqueues its placement again only if it was never sent
    (place_entry_order sends one order at most either way). The same id with another order raises ValueError.
    An empty client_order_id ("") counts as none.
    """
    client_order_id = client_order_id or None
    quantity = Decimal(str(quantity))
    price = None if price is None else Decimal(str(price))
    with transaction.atomic():
        trade, created = services.get_or_create_pending_trade(
            account,
            symbol,
            side,
            quantity,
            price,
            client_order_id=client_order_id,
        )
        place = created or services.awaits_placement(trade)
        if place:
            transaction.on_commit(lambda: tasks.place_entry_order.delay(trade.pk, timeout_sec))
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
