"""docs/DESIGN.md "The one rule"'s state table, row by row, through apply_order_snapshot — from a REST order dict and from the
WebSocket ORDER_TRADE_UPDATE of the same order state, both produced by the sandbox exchange over HTTP."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from reconciliation.orders import rules
from reconciliation.orders.snapshots import InvalidSnapshot, OrderSnapshot
from reconciliation.services import apply_order_snapshot
from tests.factories import TradeFactory
from tests.helpers import as_ws, place
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade, TradeEvent

pytestmark = pytest.mark.django_db

SHAPES = ["rest", "ws"]


def shaped(order: dict, shape: str):
    return order if shape == "rest" else as_ws(order)


def exchange_order(trade):
    with BinanceFuturesClient.for_account(trade.account) as client:
        return client.get_order_by_client_order_id(trade.symbol, trade.client_order_id)


@pytest.fixture
def trade(account):
    return TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=Decimal("50000"))


def events(trade):
    return list(TradeEvent.objects.filter(trade=trade).values_list("from_status", "to_status"))


@pytest.mark.parametrize("shape", SHAPES)
def test_filled_opens_with_quantity_price_and_order_id(binance, trade, shape):
    placed = place(trade)
    binance.control.fill_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, price="49990.5")

    assert apply_order_snapshot(trade, shaped(exchange_order(trade), shape), "reconcile") == rules.OPENED

    trade.refresh_from_db()
    assert trade.status == Trade.Status.OPEN
    assert trade.filled_qty == Decimal("0.010")
    assert trade.entry_price == Decimal("49990.5")
    assert trade.entry_order_id == placed["orderId"]
    assert trade.exchange_status == "FILLED"
    assert trade.opened_at is not None
    assert events(trade) == [("pending", "open")]


@pytest.mark.parametrize("shape", SHAPES)
def test_new_then_partial_fills_stay_pending_with_filled_qty_one_event_per_change(binance, trade, shape):
    place(trade)
    assert apply_order_snapshot(trade, shaped(exchange_order(trade), shape), "ws") == rules.NOTED
    assert trade.exchange_status == "NEW" and trade.entry_order_id is not None
    assert events(trade) == []  # bookkeeping, not a state change

    binance.control.fill_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.004")
    partial = shaped(exchange_order(trade), shape)
    assert apply_order_snapshot(trade, partial, "ws") == rules.PROGRESS
    assert apply_order_snapshot(trade, partial, "ws") == rules.UNCHANGED  # the same news twice: nothing

    binance.control.fill_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.003")
    assert apply_order_snapshot(trade, shaped(exchange_order(trade), shape), "ws") == rules.PROGRESS

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty, trade.exchange_status) == ("pending", Decimal("0.007"), "PARTIALLY_FILLED")
    assert events(trade) == [("pending", "pending"), ("pending", "pending")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("end", ["cancel", "EXPIRED", "EXPIRED_IN_MATCH"])
def test_ended_after_a_partial_fill_opens_with_the_filled_quantity(binance, trade, shape, end):
    place(trade)
    key = trade.account.api_key
    binance.control.fill_order(key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.003")
    if end == "cancel":
        binance.control.cancel_order(key, "BTCUSDT", client_order_id=trade.client_order_id)
    else:
        binance.control.expire_order(key, "BTCUSDT", client_order_id=trade.client_order_id, status=end)

    assert apply_order_snapshot(trade, shaped(exchange_order(trade), shape), "reconcile") == rules.OPENED

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.003"), Decimal("50000"))
    assert events(trade) == [("pending", "open")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("end", ["cancel", "EXPIRED", "EXPIRED_IN_MATCH"])
def test_ended_with_nothing_filled_is_cancelled(binance, trade, shape, end):
    place(trade)
    key = trade.account.api_key
    if end == "cancel":
        binance.control.cancel_order(key, "BTCUSDT", client_order_id=trade.client_order_id)
    else:
        binance.control.expire_order(key, "BTCUSDT", client_order_id=trade.client_order_id, status=end)

    assert apply_order_snapshot(trade, shaped(exchange_order(trade), shape), "reconcile") == rules.CANCELLED

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty) == ("cancelled", Decimal("0"))
    assert events(trade) == [("pending", "cancelled")]


@pytest.mark.parametrize("shape", SHAPES)
def test_rejected_fails(binance, trade, shape):
    placed = place(trade)
    rejected = dict(placed, status="REJECTED", updateTime=placed["updateTime"] + 1)

    assert apply_order_snapshot(trade, shaped(rejected, shape), "reconcile") == rules.FAILED

    trade.refresh_from_db()
    assert trade.status == Trade.Status.FAILED
    assert trade.status_reason.startswith("rejected by exchange")
    assert events(trade) == [("pending", "failed")]


def test_not_found_stays_pending_inside_the_grace_period_then_fails(binance, trade, settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 120
    with BinanceFuturesClient.for_account(trade.account) as client:
        assert client.get_order_by_client_order_id("BTCUSDT", trade.client_order_id) is None  # really -2013
    missing = OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id)

    assert apply_order_snapshot(trade, missing, "reconcile") == rules.NOT_FOUND_IN_GRACE
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING

    Trade.objects.filter(pk=trade.pk).update(created_at=timezone.now() - timedelta(seconds=121))
    trade.refresh_from_db()
    assert apply_order_snapshot(trade, missing, "reconcile") == rules.FAILED

    trade.refresh_from_db()
    assert (trade.status, trade.status_reason) == ("failed", rules.NOT_FOUND_REASON)
    assert events(trade) == [("pending", "failed")]


def test_not_found_for_an_order_seen_before_is_flagged_not_failed(binance, trade, settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 60
    place(trade)
    apply_order_snapshot(trade, exchange_order(trade), "ws")  # NEW seen (the placement answer, say)
    missing = OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id)
    assert apply_order_snapshot(trade, missing, "reconcile") == rules.NOT_FOUND_IN_GRACE  # eventual consistency
    Trade.objects.filter(pk=trade.pk).update(created_at=timezone.now() - timedelta(seconds=61))
    trade.refresh_from_db()

    result = apply_order_snapshot(trade, missing, "reconcile")

    trade.refresh_from_db()
    assert result == rules.NEEDS_OPERATOR
    assert (trade.status, trade.needs_operator) == ("pending", True)


class TestNeverBackwards:
    def test_an_older_snapshot_after_a_newer_one_is_ignored(self, binance, trade):
        place(trade)
        new = exchange_order(trade)
        binance.control.advance_clock(1000)
        binance.control.fill_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        filled = exchange_order(trade)
        assert filled["updateTime"] > new["updateTime"]

        assert apply_order_snapshot(trade, as_ws(filled), "ws") == rules.OPENED
        assert apply_order_snapshot(trade, as_ws(new), "ws") in (rules.STALE, rules.IGNORED)
        assert apply_order_snapshot(trade, filled, "reconcile") == rules.IGNORED

        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN
        assert events(trade) == [("pending", "open")]

    def test_an_older_partial_after_a_newer_partial_does_not_lower_filled_qty(self, binance, trade):
        place(trade)
        key = trade.account.api_key
        binance.control.fill_order(key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.002")
        first = exchange_order(trade)
        binance.control.advance_clock(1000)
        binance.control.fill_order(key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.005")
        second = exchange_order(trade)

        assert apply_order_snapshot(trade, second, "ws") == rules.PROGRESS
        assert apply_order_snapshot(trade, first, "ws") == rules.STALE
        trade.refresh_from_db()
        assert trade.filled_qty == Decimal("0.007")

    @pytest.mark.parametrize("status", ["open", "closed"])
    def test_open_and_closed_trades_are_never_changed_by_an_order(self, binance, trade, status):
        place(trade)
        Trade.objects.filter(pk=trade.pk).update(status=status, filled_qty=Decimal("0.010"))
        trade.refresh_from_db()
        binance.control.cancel_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

        assert apply_order_snapshot(trade, exchange_order(trade), "ws") == rules.IGNORED
        trade.refresh_from_db()
        assert trade.status == status
        assert events(trade) == []


def test_a_fill_found_after_an_inferred_failure_corrects_the_trade(binance, trade, settings):
    """-2013 past the grace period marked it failed; the order then shows up filled: the fill wins."""
    settings.PENDING_NOT_FOUND_GRACE_SEC = 0
    apply_order_snapshot(trade, OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id), "reconcile")
    assert trade.status == Trade.Status.FAILED
    place(trade)
    binance.control.fill_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

    assert apply_order_snapshot(trade, exchange_order(trade), "reconcile") == rules.REOPENED

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty) == ("open", Decimal("0.010"))
    assert events(trade) == [("pending", "failed"), ("failed", "open")]


class TestWrongInput:
    def test_another_orders_snapshot_changes_nothing(self, binance, trade, account):
        other = TradeFactory(account=account, symbol="BTCUSDT")
        place(other)
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=other.client_order_id)

        with pytest.raises(rules.SnapshotMismatch):
            apply_order_snapshot(trade, exchange_order(other), "ws")
        trade.refresh_from_db()
        assert trade.status == Trade.Status.PENDING
        assert events(trade) == []

    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"status": "FILLED"},
            {"symbol": "BTCUSDT", "status": "WAT", "clientOrderId": "x"},
            {"symbol": "BTCUSDT", "status": "FILLED", "clientOrderId": "x", "executedQty": 0.01},  # float: lossy
            {"symbol": "BTCUSDT", "status": "FILLED", "clientOrderId": "x", "executedQty": "-1"},
            {"symbol": "BTCUSDT", "status": "FILLED", "clientOrderId": "x", "executedQty": "1e400"},
            "FILLED",
            None,
        ],
    )
    def test_malformed_payload_raises_invalid_snapshot_and_changes_nothing(self, trade, payload):
        with pytest.raises(InvalidSnapshot):
            apply_order_snapshot(trade, payload, "ws")
        trade.refresh_from_db()
        assert trade.status == Trade.Status.PENDING


class TestNotFoundAroundPlacement:
    """-2013 means "not visible yet" for a while after the order is *sent*, which can be long after the trade was
    created (placements queue behind other tasks)."""

    def test_grace_runs_from_the_placement_not_from_the_trades_creation(self, trade, settings):
        settings.PENDING_NOT_FOUND_GRACE_SEC = 120
        now = timezone.now()
        Trade.objects.filter(pk=trade.pk).update(
            created_at=now - timedelta(seconds=130), placed_at=now, exchange_status="PLACING"
        )  # sent just now, answer unknown
        trade.refresh_from_db()
        missing = OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id)

        assert apply_order_snapshot(trade, missing, "reconcile") == rules.NOT_FOUND_IN_GRACE

        Trade.objects.filter(pk=trade.pk).update(placed_at=now - timedelta(seconds=121))
        trade.refresh_from_db()
        assert apply_order_snapshot(trade, missing, "reconcile") == rules.FAILED
        assert events(trade) == [("pending", "failed")]

    def test_an_answer_read_before_the_placement_was_claimed_does_not_fail_it(self, trade, settings):
        settings.PENDING_NOT_FOUND_GRACE_SEC = 120
        Trade.objects.filter(pk=trade.pk).update(created_at=timezone.now() - timedelta(seconds=130))
        trade.refresh_from_db()  # what a reconcile read: never sent, past the grace
        Trade.objects.filter(pk=trade.pk).update(exchange_status="PLACING", placed_at=timezone.now())  # then sent

        result = apply_order_snapshot(
            trade, OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id), "reconcile"
        )

        assert result == rules.NOT_FOUND_IN_GRACE
        assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING
        assert events(trade) == []


def test_a_working_snapshot_from_the_same_millisecond_as_the_end_does_not_reopen(binance, trade):
    """Binance stamps NEW and EXPIRED of an order that ends at once (IOC, GTX) with the same time."""
    place(trade)
    new = exchange_order(trade)
    binance.control.expire_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    expired = exchange_order(trade)
    new["updateTime"] = expired["updateTime"]  # the same millisecond (the sandbox's clock runs on)

    assert apply_order_snapshot(trade, as_ws(expired), "ws") == rules.CANCELLED
    assert apply_order_snapshot(trade, new, "place") == rules.STALE  # the placement answer, late

    trade.refresh_from_db()
    assert trade.status == Trade.Status.CANCELLED
    assert events(trade) == [("pending", "cancelled")]


def test_the_same_new_as_before_a_manual_mark_still_reopens_the_trade(binance, trade):
    """Not stale: a resting order's NEW keeps its time. Recorded, then -2013 once and an operator's mark: the next
    look at the order must reopen the trade (the same-millisecond rule is for ended orders only)."""
    place(trade)
    new = exchange_order(trade)
    assert apply_order_snapshot(trade, new, "reconcile") == rules.NOTED  # NEW at T recorded
    Trade.objects.filter(pk=trade.pk).update(status=Trade.Status.FAILED, status_reason="marked failed by desk")
    trade.refresh_from_db()

    assert apply_order_snapshot(trade, new, "reconcile") == rules.REOPENED

    trade.refresh_from_db()
    assert trade.status == Trade.Status.PENDING


@pytest.mark.parametrize("shape", SHAPES)
def test_a_missing_entry_price_is_filled_by_a_snapshot_of_the_same_quantity_without_an_event(binance, trade, shape):
    placed = place(trade)
    binance.control.fill_order(
        trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id, qty="0.004", price="49000"
    )
    with BinanceFuturesClient.for_account(trade.account) as client:
        answer = client.cancel_order(trade.symbol, client_order_id=trade.client_order_id)  # no avgPrice in it
    assert "avgPrice" not in answer
    assert apply_order_snapshot(trade, answer, "cancel") == rules.OPENED
    assert trade.entry_price is None

    order = exchange_order(trade)
    other_qty = dict(order, executedQty="0.003", updateTime=order["updateTime"])
    assert apply_order_snapshot(trade, shaped(other_qty, shape), "reconcile") == rules.IGNORED  # another quantity
    assert apply_order_snapshot(trade, shaped(order, shape), "reconcile") == rules.PRICED
    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.004"), Decimal("49000"))
    assert events(trade) == [("pending", "open")]
    later = dict(order, avgPrice="1.00000", updateTime=order["updateTime"] + 1)
    assert apply_order_snapshot(trade, shaped(later, shape), "reconcile") == rules.IGNORED  # never moved again
    assert Trade.objects.get(pk=trade.pk).entry_price == Decimal("49000") and placed["orderId"] == trade.entry_order_id
