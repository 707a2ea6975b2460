"""One small value type for "what Binance says about an order", whichever path it came by.

REST order dicts (GET/POST/DELETE /fapi/v1/order, allOrders) and the `o` object of a WebSocket ORDER_TRADE_UPDATE
carry the same facts under different names; both become an `OrderSnapshot`. Anything that is not a usable order
raises `InvalidSnapshot` with a short reason, never a KeyError from deep inside the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

# Binance order statuses (USDⓈ-M Futures) and our own pseudo-status for "-2013 Order does not exist".
NEW = "NEW"
PARTIALLY_FILLED = "PARTIALLY_FILLED"
FILLED = "FILLED"
CANCELED = "CANCELED"
EXPIRED = "EXPIRED"
EXPIRED_IN_MATCH = "EXPIRED_IN_MATCH"
REJECTED = "REJECTED"
NOT_FOUND = "NOT_FOUND"
# Trade.exchange_status while a placement is in flight (set before sending, so a re-delivered placement task never
# sends a second order with the same client order id).
PLACING = "PLACING"

WORKING = frozenset({NEW, PARTIALLY_FILLED})
ENDED_UNFILLED_OR_PARTIAL = frozenset({CANCELED, EXPIRED, EXPIRED_IN_MATCH})
ENDED = ENDED_UNFILLED_OR_PARTIAL | {FILLED, REJECTED}
KNOWN_STATUSES = WORKING | ENDED


MAX_DECIMAL = Decimal(10) ** 17  # what DECIMAL(28,10) columns hold
MAX_INT = 2**63 - 1  # what BIGINT columns (entry_order_id, exchange_update_time) hold


class InvalidSnapshot(ValueError):
    """The payload is not a usable Binance order."""


@dataclass(frozen=True)
class OrderSnapshot:
    symbol: str
    status: str
    order_id: int | None
    client_order_id: str | None
    executed_qty: Decimal
    avg_price: Decimal | None
    update_time: int | None  # Binance's ms timestamp of this state of the order
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_working(self) -> bool:
        return self.status in WORKING

    @classmethod
    def from_rest(cls, order: dict) -> OrderSnapshot:
        """A REST order dict: {"symbol", "status", "orderId", "clientOrderId", "executedQty", "avgPrice", "updateTime"}."""
        return cls._build(
            order,
            symbol=order.get("symbol"),
            status=order.get("status"),
            order_id=order.get("orderId"),
            client_order_id=order.get("clientOrderId"),
            executed_qty=order.get("executedQty"),
            avg_price=order.get("avgPrice"),
            update_time=order.get("updateTime", order.get("time")),
        )

    @classmethod
    def from_ws(cls, o: dict) -> OrderSnapshot:
        """The `o` object of ORDER_TRADE_UPDATE: s symbol, X status, i orderId, c clientOrderId, z cumulative filled
        qty, ap average price, T order trade time."""
        return cls._build(
            o,
            symbol=o.get("s"),
            status=o.get("X"),
            order_id=o.get("i"),
            client_order_id=o.get("c"),
            executed_qty=o.get("z"),
            avg_price=o.get("ap"),
            update_time=o.get("T"),
        )

    @classmethod
    def parse(cls, order: OrderSnapshot | dict) -> OrderSnapshot:
        """Accept a snapshot, a REST order dict, a WebSocket `o` object, or a whole ORDER_TRADE_UPDATE event."""
        if isinstance(order, OrderSnapshot):
            return order
        if not isinstance(order, dict):
            raise InvalidSnapshot(f"expected an order object, got {type(order).__name__}")
        if order.get("e") == "ORDER_TRADE_UPDATE" and isinstance(order.get("o"), dict):
            return cls.from_ws(order["o"])
        if "X" in order and "i" in order:
            return cls.from_ws(order)
        if "status" in order:
            return cls.from_rest(order)
        raise InvalidSnapshot("neither a REST order nor an ORDER_TRADE_UPDATE order")

    @classmethod
    def not_found(
        cls, symbol: str, *, order_id: int | None = None, client_order_id: str | None = None
    ) -> OrderSnapshot:
        """Binance answered -2013 "Order does not exist." for this order."""
        return cls(symbol, NOT_FOUND, order_id, client_order_id, Decimal("0"), None, None, {"code": -2013})

    @classmethod
    def rejected_on_placement(
        cls, symbol: str, client_order_id: str | None, code: int | None, message: str
    ) -> OrderSnapshot:
        """Binance refused to create the order (an error answer to POST /fapi/v1/order, not a maybe)."""
        return cls(symbol, REJECTED, None, client_order_id, Decimal("0"), None, None, {"code": code, "msg": message})

    @classmethod
    def _build(
        cls,
        raw: dict,
        *,
        symbol: Any,
        status: Any,
        order_id: Any,
        client_order_id: Any,
        executed_qty: Any,
        avg_price: Any,
        update_time: Any,
    ) -> OrderSnapshot:
        if not isinstance(symbol, str) or not symbol:
            raise InvalidSnapshot("missing symbol")
        if not isinstance(status, str) or status not in KNOWN_STATUSES:  # a list or dict is not even hashable
            raise InvalidSnapshot(f"unknown order status {str(status)[:40]!r}")
        if not isinstance(client_order_id, str) or not client_order_id:
            client_order_id = None
        order_id = _int_or_none(order_id, "orderId")
        if order_id is None and client_order_id is None:  # after parsing: "orderId": "" is no id either
            raise InvalidSnapshot("neither orderId nor clientOrderId")
        return cls(
            symbol=symbol,
            status=status,
            order_id=order_id,
            client_order_id=client_order_id,
            executed_qty=_decimal(executed_qty, "executedQty", default=Decimal("0")),
            avg_price=_positive_or_none(_decimal(avg_price, "avgPrice", default=None)),
            update_time=_int_or_none(update_time, "updateTime"),
            raw=raw,
        )


_D = TypeVar("_D", Decimal, None)  # _decimal's default: a Decimal, or None for "absent"


def _decimal(value: Any, name: str, *, default: _D) -> Decimal | _D:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        # Binance sends decimals as strings; a float here means someone parsed JSON lossily.
        raise InvalidSnapshot(f"{name} must be a decimal string, got {type(value).__name__}")
    try:
        result = Decimal(value)
    except (InvalidOperation, ValueError):
        raise InvalidSnapshot(f"{name} is not a number: {str(value)[:40]!r}") from None
    if not result.is_finite() or result < 0 or result >= MAX_DECIMAL:
        raise InvalidSnapshot(f"{name} out of range: {str(value)[:40]!r}")
    return result


def _positive_or_none(value: Decimal | None) -> Decimal | None:
    return value if value else None  # Binance reports avgPrice "0" / "0.00000" before any fill


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, (bool, float)):
        raise InvalidSnapshot(f"{name} must be an integer, got {type(value).__name__}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidSnapshot(f"{name} is not an integer: {str(value)[:40]!r}") from None
    if number < 0:
        raise InvalidSnapshot(f"{name} is negative")
    if number > MAX_INT:  # the database could neither store nor even look it up
        raise InvalidSnapshot(f"{name} out of range: {str(value)[:40]!r}")
    return number
