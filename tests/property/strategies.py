"""Hypothesis strategies: a Binance order's true life, and the messy ways its snapshots reach us.

An `OrderLife` is what Binance really did with one USDⓈ-M Futures order, as the REST order dicts
(GET /fapi/v1/order) of its successive states: strictly increasing updateTime, non-decreasing executedQty,
avgPrice the quantity-weighted mean of the fills so far ("0" before any), Decimal strings throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from hypothesis import strategies as st

from tests.helpers import as_ws

QTY_STEP = Decimal("0.001")
PRICE_TICK = Decimal("0.1")
AVG_PLACES = Decimal("0.00000001")  # Binance prints avgPrice with up to 8 decimals; the DB keeps 10

FILLED, CANCELED, EXPIRED, EXPIRED_IN_MATCH, REJECTED = "FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"
WORKING = "WORKING"  # the order is still live at the end of the life (last status NEW or PARTIALLY_FILLED)
ENDS = (FILLED, CANCELED, EXPIRED, EXPIRED_IN_MATCH, REJECTED, WORKING)
SHAPES = ("rest", "ws_event", "ws_order")  # REST dict, whole ORDER_TRADE_UPDATE, its `o` object


@dataclass(frozen=True)
class OrderLife:
    symbol: str
    client_order_id: str
    order_id: int
    quantity: Decimal
    price: Decimal
    end: str
    snapshots: tuple[dict, ...]  # REST dicts, oldest first

    @property
    def final(self) -> dict:
        return self.snapshots[-1]

    def expected(self) -> tuple[str, Decimal, Decimal | None]:
        """(status, filled_qty, entry_price) docs/DESIGN.md "The one rule"'s table gives a pending trade for the final snapshot."""
        executed = Decimal(self.final["executedQty"])
        avg = Decimal(self.final["avgPrice"]) or None
        status = self.final["status"]
        if status == FILLED or (status in (CANCELED, EXPIRED, EXPIRED_IN_MATCH) and executed > 0):
            return "open", executed, avg
        if status in (CANCELED, EXPIRED, EXPIRED_IN_MATCH):
            return "cancelled", Decimal("0"), None
        if status == REJECTED:
            return "failed", Decimal("0"), None
        return "pending", executed, avg


def rest_order(*, symbol, client_order_id, order_id, quantity, price, status, executed, avg, created, updated):
    return {
        "orderId": order_id,
        "symbol": symbol,
        "status": status,
        "clientOrderId": client_order_id,
        "price": str(price),
        "avgPrice": str(avg) if executed else "0.00000",
        "origQty": str(quantity),
        "executedQty": str(executed),
        "cumQuote": str((avg * executed) if executed else Decimal("0")),
        "timeInForce": "GTC",
        "type": "LIMIT",
        "reduceOnly": False,
        "closePosition": False,
        "side": "BUY",
        "positionSide": "BOTH",
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": "LIMIT",
        "priceMatch": "NONE",
        "selfTradePreventionMode": "NONE",
        "goodTillDate": 0,
        "time": created,
        "updateTime": updated,
    }


client_order_ids = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-", min_size=1, max_size=36
)


@st.composite
def order_lives(draw, *, ends=ENDS, symbol=None, client_order_id=None) -> OrderLife:
    symbol = symbol or draw(st.sampled_from(["BTCUSDT", "ETHUSDT", "1000PEPEUSDT"]))
    client_order_id = client_order_id or draw(client_order_ids)
    order_id = draw(st.integers(1, 2**62))
    steps = draw(st.integers(1, 10_000))  # quantity in QTY_STEPs
    quantity = steps * QTY_STEP
    price = draw(st.integers(1, 10**7)) * PRICE_TICK
    end = draw(st.sampled_from(ends))

    # Cumulative fills (in steps), strictly increasing.
    if end == REJECTED:
        cumulative = []
    else:
        cuts = sorted(draw(st.sets(st.integers(1, steps - 1), max_size=min(5, steps - 1)))) if steps > 1 else []
        if end == FILLED:
            cumulative = cuts + [steps]
        else:
            cumulative = cuts[: draw(st.integers(0, len(cuts)))] if cuts else []
    fill_prices = [draw(st.integers(1, 10**7)) * PRICE_TICK for _ in cumulative]

    states: list[tuple[str, Decimal, Decimal]] = []  # (status, executed, avg)
    if end == WORKING and not cumulative or draw(st.booleans()):
        states.append(("NEW", Decimal("0"), Decimal("0")))
    notional, done = Decimal("0"), 0
    for i, (cum, fill_price) in enumerate(zip(cumulative, fill_prices, strict=True)):
        notional += (cum - done) * QTY_STEP * fill_price
        done = cum
        executed = cum * QTY_STEP
        avg = (notional / executed).quantize(AVG_PLACES, ROUND_HALF_EVEN)
        last = i == len(cumulative) - 1
        states.append((FILLED if end == FILLED and last else "PARTIALLY_FILLED", executed, avg))
    if end in (CANCELED, EXPIRED, EXPIRED_IN_MATCH, REJECTED):
        executed = done * QTY_STEP
        states.append((end, executed, states[-1][2] if done else Decimal("0")))

    created = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    times, t = [], created
    for _ in states:
        t += draw(st.integers(1, 3_600_000))
        times.append(t)
    snapshots = tuple(
        rest_order(
            symbol=symbol,
            client_order_id=client_order_id,
            order_id=order_id,
            quantity=quantity,
            price=price,
            status=status,
            executed=executed,
            avg=avg,
            created=created,
            updated=updated,
        )
        for (status, executed, avg), updated in zip(states, times, strict=True)
    )
    return OrderLife(symbol, client_order_id, order_id, quantity, price, end, snapshots)


def shaped(order: dict, shape: str):
    """The same order state as the path `shape` delivers it."""
    if shape == "rest":
        return dict(order)
    event = as_ws(order)
    return event if shape == "ws_event" else event["o"]


@st.composite
def deliveries(draw, life: OrderLife, *, max_copies: int = 3) -> list[tuple[int, str]]:
    """(snapshot index, shape) pairs: every snapshot 0..max_copies times (the final one at least once), shuffled."""
    last = len(life.snapshots) - 1
    picks = []
    for index in range(len(life.snapshots)):
        copies = draw(st.integers(1 if index == last else 0, max_copies))
        picks.extend([index] * copies)
    order = draw(st.permutations(picks))
    return [(index, draw(st.sampled_from(SHAPES))) for index in order]


# --- Payloads from a confused or hostile peer -----------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# What a field of an order may hold when something went wrong: every JSON type, numbers as floats, huge and
# negative numbers, exponents, NaN/Infinity (Python's json accepts them), non-ASCII and lone surrogates.
weird_numbers = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-0",
        "-1",
        "-0.001",
        "1e400",
        "-1e400",
        "1E+17",
        "99999999999999999",
        "100000000000000000",
        "NaN",
        "sNaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        "inf",
        "0x10",
        "1_000",
        "1,5",
        "١٢٣",
        "0.1.2",
        "12abc",
        "9" * 5000,
        "0." + "0" * 40 + "1",
        str(2**63),
        str(2**64),
        str(-(2**63)),
    ]
) | st.integers(min_value=-(2**70), max_value=2**70).map(str)
weird_values = (
    json_scalars
    | weird_numbers
    | st.floats()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([2**63 - 1, 2**63, 2**64, -1, 0, True, False, float("nan"), float("inf"), [], {}, [1], {"a": 1}])
    | st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
    | st.text(st.characters(blacklist_categories=()), min_size=1, max_size=8)  # lone surrogates included
)


@st.composite
def mutated(draw, base: dict, *, keys=None, max_changes: int = 4) -> dict:
    """`base` with some fields removed, replaced by weird values, or added."""
    result = dict(base)
    keys = list(keys or base)
    for _ in range(draw(st.integers(1, max_changes))):
        action = draw(st.sampled_from(["drop", "replace", "replace", "add"]))
        key = draw(st.sampled_from(keys))
        if action == "drop":
            result.pop(key, None)
        elif action == "replace":
            result[key] = draw(weird_values)
        else:
            result[draw(st.text(max_size=6))] = draw(weird_values)
    return result
