"""Property: `OrderSnapshot.parse` on anything returns a snapshot the rule and the database can use, or raises
InvalidSnapshot — never another exception."""

from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciliation.orders.snapshots import KNOWN_STATUSES, MAX_DECIMAL, InvalidSnapshot, OrderSnapshot

from .profiles import examples
from .strategies import SHAPES, json_values, mutated, order_lives, shaped, weird_values

BIGINT_MAX = 2**63 - 1  # Trade.entry_order_id / exchange_update_time are BIGINT columns
REST_FIELDS = ["symbol", "status", "orderId", "clientOrderId", "executedQty", "avgPrice", "updateTime", "time"]
WS_FIELDS = ["s", "X", "i", "c", "z", "ap", "T"]


def parse_or_reject(payload):
    try:
        snap = OrderSnapshot.parse(payload)
    except InvalidSnapshot:
        return None
    assert isinstance(snap.symbol, str) and snap.symbol
    assert snap.status in KNOWN_STATUSES
    assert snap.order_id is not None or snap.client_order_id
    assert snap.client_order_id is None or (isinstance(snap.client_order_id, str) and snap.client_order_id)
    for number in (snap.order_id, snap.update_time):
        assert number is None or (type(number) is int and 0 <= number <= BIGINT_MAX)
    assert isinstance(snap.executed_qty, Decimal) and snap.executed_qty.is_finite()
    assert 0 <= snap.executed_qty < MAX_DECIMAL
    assert snap.avg_price is None or (snap.avg_price.is_finite() and 0 < snap.avg_price < MAX_DECIMAL)
    return snap


@settings(max_examples=examples(300))
@given(
    payload=json_values
    | weird_values
    | st.dictionaries(st.sampled_from(REST_FIELDS + WS_FIELDS + ["e", "o"]), weird_values)
)
@example(payload={"status": [], "symbol": "0"})  # found by the deep profile: TypeError (unhashable), fixed
@example(payload={"symbol": "BTCUSDT", "status": "NEW", "clientOrderId": "0", "orderId": 2**63})  # found: DB range
@example(payload={"symbol": "BTCUSDT", "status": "CANCELED", "orderId": ""})  # found (deep): a snapshot with no id
def test_parse_of_anything_returns_a_usable_snapshot_or_raises_invalid_snapshot(payload):
    parse_or_reject(payload)


@settings(max_examples=examples(400))
@given(data=st.data(), life=order_lives(), shape=st.sampled_from(SHAPES))
def test_parse_of_a_mutated_real_order_returns_a_usable_snapshot_or_raises_invalid_snapshot(data, life, shape):
    order = shaped(data.draw(st.sampled_from(life.snapshots)), shape)
    if shape == "ws_event":
        order = dict(order, o=data.draw(mutated(order["o"], keys=WS_FIELDS)))
        if data.draw(st.booleans()):
            order = data.draw(mutated(order, keys=["e", "o", "E", "T"], max_changes=1))
    else:
        order = data.draw(mutated(order, keys=REST_FIELDS if shape == "rest" else WS_FIELDS))
    parse_or_reject(order)


@settings(max_examples=examples(100))
@given(life=order_lives(), shape=st.sampled_from(SHAPES))
def test_every_real_shape_parses_to_the_same_snapshot(life, shape):
    for order in life.snapshots:
        snap = parse_or_reject(shaped(order, shape))
        assert snap == OrderSnapshot.from_rest(order)
        assert (snap.status, snap.executed_qty, snap.update_time) == (
            order["status"],
            Decimal(order["executedQty"]),
            order["updateTime"],
        )
