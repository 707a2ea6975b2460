"""What the bot calls, in-process (the same thing as the `open_position` task, for callers that share our DB)."""

from decimal import Decimal

from django.db import transaction

from trades.models import Account, Trade

from . import services, tasks


def open_position(account: Account, symbol: str, side: str, quantity, price=None, *, timeout_sec: int | None = None,
                  client_order_id: str | None = None) -> Trade:
    """Create the pending trade (with a generated client order id) and enqueue its placement once committed.

    price=None places a MARKET order. The trade id and client order id are known at once; the fill arrives by the
    WebSocket, the entry timeout's cancel-and-verify, or the periodic reconcile — whichever sees it first.
    """
    with transaction.atomic():
        trade = services.create_pending_trade(
            account, symbol, side, Decimal(str(quantity)), None if price is None else Decimal(str(price)),
            client_order_id=client_order_id,
        )
        transaction.on_commit(lambda: tasks.place_entry_order.delay(trade.pk, timeout_sec))
    return trade
