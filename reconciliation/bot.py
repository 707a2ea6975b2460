"""What the bot calls, in-process (the same thing as the `open_position` task, for callers that share our DB)."""

from decimal import Decimal

from trades.models import Account, Trade

from . import services, tasks


def open_position(
    account: Account,
    symbol: str,
    side: str,
    quantity: Decimal | int | float | str,
    price: Decimal | int | float | str | None = None,
    *,
    timeout_sec: int | None = None,
    client_order_id: str | None = None,
) -> Trade:
    """Create the pending trade (with a generated client order id unless given) and enqueue its placement once
    committed (`services.open_position`, entries/create.py, documents the rest).

    price=None places a MARKET order. The trade id and client order id are known at once; the fill arrives by the
    WebSocket, the entry timeout's cancel-and-verify, or the periodic reconcile — whichever sees it first.
    Idempotent on client_order_id; the same id with another order raises ValueError. An empty client_order_id ("")
    counts as none.
    """
    return services.open_position(
        account,
        symbol,
        side,
        quantity,
        price,
        timeout_sec=timeout_sec,
        client_order_id=client_order_id,
        enqueue_placement=lambda trade_id, timeout: tasks.place_entry_order.delay(trade_id, timeout),
    )
