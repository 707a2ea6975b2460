"""Position sync per (symbol, position side): hedge mode learned from Binance, one-way netting, and no close on
one lagging positionRisk read (F21, F22, F23 at the service level)."""

from datetime import timedelta
from decimal import Decimal

import pytest

from reconciliation.entries.position_mode import is_hedge_mode
from reconciliation.models import OrphanPosition
from reconciliation.services import create_pending_trade, place_entry_order, sync_positions_with_binance
from tests.helpers import entered
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

pytestmark = pytest.mark.django_db


def status(trade):
    return Trade.objects.get(pk=trade.pk).status


class TestNoCloseOnOneRead:
    def test_a_lagging_read_does_not_close_a_live_trade(self, binance, account, settings):
        settings.POSITION_CONFIRM_SEC = 3600
        trade = entered(account, "BUY")
        binance.control.lag_positions(account.api_key, count=1, mode="omit")

        report = sync_positions_with_binance(account)

        assert status(trade) == Trade.Status.OPEN
        assert report["extra"]["closed"] == 0 and report["extra"]["unconfirmed"] == 1
        assert report["extra"]["confirm_after"] == 3600
        assert Trade.objects.get(pk=trade.pk).position_gone_at is not None
        # The next read shows the position again: the "gone" read is forgotten.
        assert sync_positions_with_binance(account)["extra"]["in_sync"] == 1
        assert Trade.objects.get(pk=trade.pk).position_gone_at is None

    def test_two_reads_far_enough_apart_close_it(self, binance, account, settings):
        settings.POSITION_CONFIRM_SEC = 5
        trade = entered(account, "BUY")
        binance.control.lag_positions(account.api_key, count=3, mode="omit")

        sync_positions_with_binance(account)
        sync_positions_with_binance(account)  # too soon after the first: not a confirmation
        assert status(trade) == Trade.Status.OPEN
        first = Trade.objects.get(pk=trade.pk).position_gone_at
        Trade.objects.filter(pk=trade.pk).update(position_gone_at=first - timedelta(seconds=5))
        report = sync_positions_with_binance(account)

        assert status(trade) == Trade.Status.CLOSED and report["extra"]["closed"] == 1
        assert "two reads" in trade.events.last().payload["reason"]

    def test_closing_fills_close_it_on_the_first_read(self, binance, account, settings):
        settings.POSITION_CONFIRM_SEC = 3600
        trade = entered(account, "SELL")
        with BinanceFuturesClient.for_account(account) as client:  # closed by hand, in two parts
            for qty in ("0.004", "0.006"):
                client.place_order("BTCUSDT", "BUY", Decimal(qty), order_type="MARKET", reduce_only=True)

        report = sync_positions_with_binance(account)

        trade.refresh_from_db()
        assert trade.status == Trade.Status.CLOSED and report["extra"]["closed"] == 1
        assert trade.exit_price == Decimal("60000")


class TestOneWayNetting:
    def test_buy_and_sell_that_net_out_are_consistent(self, binance, account, settings):
        settings.POSITION_CONFIRM_SEC = 0
        buy, sell = entered(account, "BUY"), entered(account, "SELL")

        for _ in range(2):
            report = sync_positions_with_binance(account)
            assert report["extra"]["closed"] == 0 and report["extra"]["orphans"] == 0

        assert {status(buy), status(sell)} == {Trade.Status.OPEN}
        assert not OrphanPosition.objects.exists()

    def test_a_partial_net_is_explained_by_the_sum(self, binance, account):
        entered(account, "BUY", "0.010")
        entered(account, "SELL", "0.004")

        report = sync_positions_with_binance(account)

        assert report["extra"]["in_sync"] == 1 and report["extra"]["orphans"] == 0


class TestHedgeMode:
    def test_entries_carry_long_and_short_and_are_compared_per_side(self, binance, account):
        binance.control.set_position_mode(account.api_key, True)
        long, short = entered(account, "BUY"), entered(account, "SELL")

        report = sync_positions_with_binance(account)

        assert (long.position_side, short.position_side) == ("LONG", "SHORT")
        assert report["extra"] == {
            "closed": 0,
            "in_sync": 2,
            "orphans": 0,
            "recovered": 0,
            "unconfirmed": 0,
            "reduced": 0,
        }
        account.refresh_from_db()
        assert account.dual_side_position is True and account.position_mode_checked_at is not None

    def test_one_way_entries_send_no_position_side(self, binance, account):
        trade = entered(account, "BUY")
        assert trade.position_side == "BOTH"
        assert binance.control.positions(account.api_key)["positions"][0]["positionSide"] == "BOTH"

    def test_the_mode_is_read_once_an_hour_not_per_order(self, binance, account, settings):
        settings.POSITION_MODE_REFRESH_SEC = 3600
        binance.control.reset_stats()
        entered(account, "BUY")
        entered(account, "BUY")
        assert binance.control.stats()["requests"]["GET /fapi/v1/positionSide/dual"] == 1

    def test_a_4061_rereads_the_mode_and_sends_with_the_right_side(self, binance, account):
        with BinanceFuturesClient.for_account(account) as client:
            assert is_hedge_mode(account, client) is False  # cached: one-way
        binance.control.set_position_mode(account.api_key, True)  # switched on the web UI meanwhile

        trade = entered(account, "SELL")

        assert trade.position_side == "SHORT"
        account.refresh_from_db()
        assert account.dual_side_position is True

    def test_a_4061_with_no_mode_change_fails_the_trade_with_binances_reason(self, binance, account, monkeypatch):
        def refuse(self, *args, **kwargs):
            from trades.exceptions import ExchangeError

            raise ExchangeError(
                -4061, "Order's position side does not match user's setting.", 400, endpoint="POST /fapi/v1/order"
            )

        monkeypatch.setattr(BinanceFuturesClient, "place_order", refuse)
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"))

        assert place_entry_order(trade)["outcome"] == "rejected"
        trade.refresh_from_db()
        assert trade.status == Trade.Status.FAILED and "-4061" in trade.status_reason

    def test_orphans_are_per_symbol_and_side(self, binance, account):
        binance.control.set_position_mode(account.api_key, True)
        entered(account, "BUY")
        with BinanceFuturesClient.for_account(account) as client:  # someone shorts by hand
            client.place_order("BTCUSDT", "SELL", Decimal("0.003"), order_type="MARKET", position_side="SHORT")

        report = sync_positions_with_binance(account)

        [orphan] = OrphanPosition.objects.all()
        assert (orphan.position_side, orphan.quantity) == ("SHORT", Decimal("-0.003"))
        assert report["extra"]["in_sync"] == 1 and report["extra"]["orphans"] == 1


def test_position_sync_keeps_the_mode_fresh_without_reading_it_every_time(binance, account, settings):
    settings.POSITION_MODE_REFRESH_SEC = 3600
    binance.control.set_position_mode(account.api_key, True)
    binance.control.reset_stats()

    first = sync_positions_with_binance(account)
    sync_positions_with_binance(account)

    account.refresh_from_db()
    assert account.dual_side_position is True
    assert binance.control.stats()["requests"]["GET /fapi/v1/positionSide/dual"] == 1
    assert first["weight_used"] >= 35


def test_an_entry_is_never_sent_while_the_mode_is_unknown(binance, account):
    binance.control.inject_fault("/fapi/v1/positionSide/dual", "503", count=1, method="GET")
    trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"))

    assert place_entry_order(trade)["outcome"] == "rejected"

    trade.refresh_from_db()
    assert trade.status == Trade.Status.FAILED and "not sent: position mode unknown" in trade.status_reason
    assert binance.control.stats()["requests"].get("POST /fapi/v1/order", 0) == 0


def test_a_stale_cached_mode_is_used_when_binance_cannot_be_asked(binance, account, settings):
    settings.POSITION_MODE_REFRESH_SEC = 0
    with BinanceFuturesClient.for_account(account) as client:
        assert is_hedge_mode(account, client) is False
    binance.control.inject_fault("/fapi/v1/positionSide/dual", "503", count=1, method="GET")

    assert entered(account, "BUY").position_side == "BOTH"
