"""Partial closes and Binance's own closes (F24) at the service level, and userTrades read in 7-day windows and
1000-row pages (F28)."""

from decimal import Decimal

import pytest

from reconciliation.models import OrphanPosition
from reconciliation.services import sync_positions_with_binance
from tests.helpers import entered
from trades import binance_client
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

pytestmark = pytest.mark.django_db

DAY_MS = 86_400_000


def fresh(trade):
    return Trade.objects.get(pk=trade.pk)


def test_a_partial_liquidation_reduces_the_trade_then_adl_closes_the_rest(binance, account):
    trade = entered(account)  # 0.010 BTC at 60000
    binance.control.autoclose(account.api_key, "BTCUSDT", "liquidation", qty="0.004", price="59000")

    report = sync_positions_with_binance(account)

    trade = fresh(trade)
    assert (trade.status, trade.closed_qty, trade.open_qty) == ("open", Decimal("0.004"), Decimal("0.006"))
    assert (trade.exit_price, trade.realized_pnl) == (Decimal("59000"), Decimal("-4"))
    assert trade.status_reason == "partly closed by liquidation"
    assert report["extra"]["reduced"] == 1 and report["extra"]["orphans"] == 0
    [event] = trade.events.filter(source="position_sync")
    assert (event.from_status, event.to_status, event.payload["by_binance"]) == ("open", "open", ["liquidation"])
    assert sync_positions_with_binance(account)["extra"]["in_sync"] == 1  # applied once
    assert trade.events.filter(source="position_sync").count() == 1

    binance.control.autoclose(account.api_key, "BTCUSDT", "adl", price="61000")
    sync_positions_with_binance(account)

    trade = fresh(trade)
    assert (trade.status, trade.closed_qty, trade.status_reason) == ("closed", Decimal("0.010"), "closed by ADL")
    assert trade.exit_price == Decimal("60200")  # (0.004 × 59000 + 0.006 × 61000) / 0.010
    assert trade.realized_pnl == Decimal("2")  # −4 + 6
    assert not OrphanPosition.objects.exists()


@pytest.mark.parametrize(
    "kind, reason", [("liquidation", "closed by liquidation"), ("settlement", "closed by settlement")]
)
def test_a_full_close_by_binance_says_so(binance, account, kind, reason, settings):
    settings.POSITION_CONFIRM_SEC = 3600  # closed on the fills' evidence, not on a second read
    trade = entered(account, "SELL")
    binance.control.autoclose(account.api_key, "BTCUSDT", kind)

    report = sync_positions_with_binance(account)

    trade = fresh(trade)
    assert (trade.status, trade.status_reason, trade.exit_price) == ("closed", reason, Decimal("60000"))
    assert report["extra"]["closed"] == 1 and report["extra"]["orphans"] == 0


def test_exits_go_to_the_oldest_trades_first(binance, account):
    first, second = entered(account), entered(account)
    with BinanceFuturesClient.for_account(account) as client:  # a take-profit the bot placed, say
        client.place_order("BTCUSDT", "SELL", Decimal("0.015"), order_type="MARKET", reduce_only=True)

    sync_positions_with_binance(account)

    first, second = fresh(first), fresh(second)
    assert (first.status, first.status_reason) == ("closed", "closed by exit fills")
    assert (second.status, second.closed_qty, second.status_reason) == ("open", Decimal("0.005"), "")


def test_a_read_that_lags_the_fills_applies_them_later(binance, account):
    trade = entered(account)
    binance.control.lag_positions(account.api_key, count=1, mode="stale")  # the next read: still 0.010
    binance.control.autoclose(account.api_key, "BTCUSDT", "liquidation", qty="0.004")

    assert sync_positions_with_binance(account)["extra"]["reduced"] == 0
    assert fresh(trade).closed_qty == 0
    assert sync_positions_with_binance(account)["extra"]["reduced"] == 1
    assert fresh(trade).closed_qty == Decimal("0.004")


def test_hedge_mode_liquidation_of_one_side_reduces_only_that_side(binance, account):
    binance.control.set_position_mode(account.api_key, True)
    long, short = entered(account, "BUY"), entered(account, "SELL")
    binance.control.autoclose(account.api_key, "BTCUSDT", "liquidation", position_side="SHORT", qty="0.003")

    report = sync_positions_with_binance(account)

    assert fresh(long).closed_qty == 0
    assert (fresh(short).closed_qty, fresh(short).status) == (Decimal("0.003"), "open")
    assert report["extra"]["in_sync"] == 2 and report["extra"]["orphans"] == 0


def test_user_trades_are_read_in_seven_day_windows(binance, account):
    with BinanceFuturesClient.for_account(account) as client:
        client.sync_time()
        start = client.exchange_time_ms() - 1000
        client.place_order("BTCUSDT", "BUY", Decimal("0.010"), order_type="MARKET")
        binance.control.advance_clock(8 * DAY_MS)
        client.sync_time()
        client.place_order("BTCUSDT", "SELL", Decimal("0.010"), order_type="MARKET")

        fills = client.get_user_trades_since("BTCUSDT", start)

    assert [f["side"] for f in fills] == ["BUY", "SELL"]


def test_user_trades_full_pages_continue_by_from_id(binance, account, monkeypatch):
    monkeypatch.setattr(binance_client, "USER_TRADES_PAGE_LIMIT", 2)
    with BinanceFuturesClient.for_account(account) as client:
        client.sync_time()
        start = client.exchange_time_ms() - 1000
        for _ in range(5):
            client.place_order("BTCUSDT", "BUY", Decimal("0.001"), order_type="MARKET")

        fills = client.get_user_trades_since("BTCUSDT", start)

    assert len(fills) == 5 and len({f["id"] for f in fills}) == 5


def test_exits_taken_by_a_trade_closed_by_hand_are_not_applied_again(binance, account):
    from reconciliation.positions.sync import close_trade

    first, second = entered(account), entered(account)
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("BTCUSDT", "SELL", Decimal("0.010"), order_type="MARKET", reduce_only=True)
    close_trade(first, source="admin", actor="desk", reason="that sell closed this one")  # before any sync
    sync_positions_with_binance(account)
    assert fresh(second).closed_qty == 0

    binance.control.autoclose(account.api_key, "BTCUSDT", "liquidation", qty="0.002")
    sync_positions_with_binance(account)

    second = fresh(second)
    assert (second.closed_qty, second.status_reason) == (Decimal("0.002"), "partly closed by liquidation")


def test_a_take_profit_algo_order_closing_half_is_applied_like_any_exit(binance, account):
    trade = entered(account)
    with BinanceFuturesClient.for_account(account) as client:
        algo = client.place_algo_order(
            "BTCUSDT",
            "SELL",
            "TAKE_PROFIT_MARKET",
            trigger_price=Decimal("62000"),
            quantity=Decimal("0.005"),
            reduce_only=True,
        )
    assert sync_positions_with_binance(account)["extra"]["in_sync"] == 1  # resting: nothing to apply
    binance.control.trigger_algo_order(account.api_key, algo_id=algo["algoId"], price="62000")

    sync_positions_with_binance(account)

    trade = fresh(trade)
    assert (trade.status, trade.closed_qty, trade.exit_price, trade.realized_pnl) == (
        "open",
        Decimal("0.005"),
        Decimal("62000"),
        Decimal("10"),
    )
    with BinanceFuturesClient.for_account(account) as client:
        assert client.get_algo_order(algo_id=algo["algoId"])["algoStatus"] == "FINISHED"


def test_exits_hidden_by_one_way_netting_are_applied(binance, account):
    """BUY 0.002 closed by a reduce-only SELL, then a SELL 0.001 entry closed by a reduce-only BUY: Binance holds
    nothing, our two trades net to +0.001 — both closed by their exits (found by the property test)."""
    buy = entered(account, "BUY", "0.002")
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("BTCUSDT", "SELL", Decimal("0.002"), order_type="MARKET", reduce_only=True)
    sell = entered(account, "SELL", "0.001")
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("BTCUSDT", "BUY", Decimal("0.001"), order_type="MARKET", reduce_only=True)

    sync_positions_with_binance(account)

    assert (fresh(buy).status, fresh(sell).status) == ("closed", "closed")
    assert not OrphanPosition.objects.exists()
