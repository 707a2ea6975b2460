"""Helpers shared by the project's tests."""

import time

from trades.binance_client import BinanceFuturesClient


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds. No fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)


def place(trade, **overrides) -> dict:
    """Place the trade's order on the (sandbox) exchange as the bot would, with its client order id."""
    with BinanceFuturesClient.for_account(trade.account) as client:
        return client.place_order(
            trade.symbol,
            trade.side,
            trade.quantity,
            order_type="LIMIT" if trade.price else "MARKET",
            price=trade.price,
            client_order_id=trade.client_order_id,
            **overrides,
        )


def as_ws(order: dict) -> dict:
    """The ORDER_TRADE_UPDATE event Binance pushes for this REST order state (field names from Binance's docs). A place
    or cancel answer has no avgPrice (Binance 2026-07): the event's `ap` is then "0", as before any fill."""
    return {
        "e": "ORDER_TRADE_UPDATE",
        "E": order["updateTime"],
        "T": order["updateTime"],
        "o": {
            "s": order["symbol"],
            "c": order["clientOrderId"],
            "S": order["side"],
            "o": order["type"],
            "f": order.get("timeInForce", "GTC"),
            "q": order["origQty"],
            "p": order["price"],
            "ap": order.get("avgPrice", "0"),
            "sp": "0",
            "x": "TRADE",
            "X": order["status"],
            "i": order["orderId"],
            "l": "0",
            "z": order["executedQty"],
            "L": "0",
            "n": "0",
            "N": "USDT",
            "T": order["updateTime"],
            "t": 0,
            "b": "0",
            "a": "0",
            "m": False,
            "R": False,
            "wt": "CONTRACT_PRICE",
            "ot": order["type"],
            "ps": "BOTH",
            "cp": False,
            "rp": "0",
            "pP": False,
            "si": 0,
            "ss": 0,
            "V": "NONE",
            "pm": "NONE",
            "gtd": 0,
        },
    }


def entered(account, side="BUY", qty="0.010", symbol="BTCUSDT"):
    """The bot's entry flow in-process: a pending trade, placed (MARKET) and reconciled open."""
    from decimal import Decimal

    from reconciliation.services import create_pending_trade, place_entry_order, reconcile_pending
    from trades.models import Trade

    trade = create_pending_trade(account, symbol, side, Decimal(qty))
    place_entry_order(trade)
    reconcile_pending(account)
    trade.refresh_from_db()
    assert trade.status == Trade.Status.OPEN, trade.status_reason
    return trade
