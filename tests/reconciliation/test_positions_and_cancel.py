"""Position sync (F14, F15), cancel → verify at the service level (F4, F5) and the bot's placement."""

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from reconciliation.entries.position_mode import is_hedge_mode
from reconciliation.models import OrphanPosition
from reconciliation.orders import rules
from reconciliation.positions import sync as positions
from reconciliation.positions.orphans import recover_orphan
from reconciliation.services import (
    apply_order_snapshot,
    cancel_trade_order,
    create_pending_trade,
    place_entry_order,
    reconcile_pending,
    sync_positions_with_binance,
    verify_after_cancel,
)
from tests.factories import TradeFactory
from tests.helpers import place
from trades.binance_client import BinanceFuturesClient
from trades.egress import shared_budget
from trades.exceptions import ExchangeUnavailable
from trades.models import Trade, TradeEvent

pytestmark = pytest.mark.django_db


def opened_trade(binance, account, qty="0.010", side="BUY", symbol="BTCUSDT"):
    trade = TradeFactory(account=account, symbol=symbol, side=side, quantity=Decimal(qty), price=None)
    place(trade)  # MARKET: fills at once on the sandbox
    reconcile_pending(account)
    trade.refresh_from_db()
    assert trade.status == Trade.Status.OPEN
    return trade


class TestSyncPositions:
    def test_f15_open_trade_without_exchange_position_is_closed_with_exit_price_and_pnl(self, binance, account):
        binance.control.set_price("BTCUSDT", "50000")
        trade = opened_trade(binance, account)
        binance.control.set_price("BTCUSDT", "51000")
        with BinanceFuturesClient.for_account(account) as client:  # closed outside the bot (e.g. on the web UI)
            client.place_order("BTCUSDT", "SELL", Decimal("0.010"), order_type="MARKET", reduce_only=True)

        report = sync_positions_with_binance(account)

        trade.refresh_from_db()
        assert trade.status == Trade.Status.CLOSED and trade.closed_at is not None
        assert trade.exit_price == Decimal("51000")
        assert trade.realized_pnl == Decimal("10")  # 0.010 × (51000 − 50000)
        assert report["extra"]["closed"] == 1
        assert list(TradeEvent.objects.filter(trade=trade).values_list("to_status", "source")) == [
            ("open", "reconcile"),
            ("closed", "position_sync"),
        ]

    def test_open_trades_matching_the_position_stay_open(self, binance, account):
        first = opened_trade(binance, account, "0.010")
        second = opened_trade(binance, account, "0.005")

        report = sync_positions_with_binance(account)

        assert set(Trade.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {"open"}
        assert report["extra"] == {
            "closed": 0,
            "in_sync": 1,
            "orphans": 0,
            "recovered": 0,
            "unconfirmed": 0,
            "reduced": 0,
        }
        assert not OrphanPosition.objects.exists()

    def test_f14_position_no_trade_explains_is_reported_not_recovered_by_default(self, binance, account, settings):
        settings.SYNC_RECOVER_MISSING_POSITIONS = False
        with BinanceFuturesClient.for_account(account) as client:  # a fill the DB never heard of
            client.place_order("ETHUSDT", "SELL", Decimal("0.5"), order_type="MARKET")

        report = sync_positions_with_binance(account)
        sync_positions_with_binance(account)  # seen again: still one record

        [orphan] = OrphanPosition.objects.all()
        assert (orphan.symbol, orphan.quantity, orphan.status) == ("ETHUSDT", Decimal("-0.5"), "open")
        assert report["extra"]["orphans"] == 1 and report["extra"]["recovered"] == 0
        assert not Trade.objects.filter(account=account).exists()

    def test_f14_recovered_as_an_open_trade_only_when_enabled(self, binance, account, settings):
        settings.SYNC_RECOVER_MISSING_POSITIONS = True
        opened_trade(binance, account, "0.010")
        with BinanceFuturesClient.for_account(account) as client:
            client.place_order("BTCUSDT", "BUY", Decimal("0.004"), order_type="MARKET")  # unexplained extra

        first = sync_positions_with_binance(account)  # seen once: could be a fill on its way to the DB
        assert first["extra"]["recovered"] == 0 and OrphanPosition.objects.get().status == "open"
        report = sync_positions_with_binance(account)  # the same gap again: recovered

        [orphan] = OrphanPosition.objects.all()
        recovered = orphan.trade
        assert orphan.status == "recovered" and report["extra"]["recovered"] == 1
        assert (recovered.status, recovered.side, recovered.filled_qty) == ("open", "BUY", Decimal("0.004"))
        assert TradeEvent.objects.filter(trade=recovered, to_status="open").count() == 1
        assert sync_positions_with_binance(account)["extra"]["in_sync"] == 1  # explained now

    def test_a_gap_that_closes_before_the_next_sync_is_never_recovered(self, binance, account, settings):
        settings.SYNC_RECOVER_MISSING_POSITIONS = True
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        fill_in_flight = RaceAtPositionRead(
            BinanceFuturesClient.for_account(account),
            before=lambda: binance.control.fill_order(
                account.api_key, "BTCUSDT", client_order_id=trade.client_order_id
            ),
        )

        # The fill lands after this sync's reconcile step and before the positions read: a gap, seen once.
        assert sync_positions_with_binance(account, client=fill_in_flight)["extra"]["orphans"] == 1
        sync_positions_with_binance(account)  # its reconcile step applies the fill: explained

        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN
        assert not Trade.objects.exclude(pk=trade.pk).exists()  # no recovered double
        assert OrphanPosition.objects.get().status == "resolved"

    def test_a_fill_the_sync_could_not_check_is_never_recovered_twice(self, binance, account, settings):
        """The stream missed a fill and Binance's order endpoint fails during two syncs in a row: the same gap twice,
        but a pending trade on the symbol may explain it. Recovering it would count the fill twice."""
        settings.SYNC_RECOVER_MISSING_POSITIONS = True
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        binance.control.inject_fault("/fapi/v1/order", "503", count=2, method="GET")

        for _ in range(2):
            report = sync_positions_with_binance(account)
            assert report["extra"]["orphans"] == 1 and report["extra"]["recovered"] == 0
        reconcile_pending(account)  # Binance answers again: the real trade opens

        assert list(Trade.objects.values_list("status", "filled_qty")) == [("open", Decimal("0.010"))]
        assert sync_positions_with_binance(account)["extra"]["in_sync"] == 1

    def test_a_pending_trade_created_during_the_sync_skips_recovery_and_the_sync_completes(
        self, binance, account, settings, monkeypatch
    ):
        settings.SYNC_RECOVER_MISSING_POSITIONS = True
        with BinanceFuturesClient.for_account(account) as client:
            client.place_order("ETHUSDT", "BUY", Decimal("0.100"), order_type="MARKET")  # by hand
        sync_positions_with_binance(account)  # seen once
        real_record = positions._record_orphan

        def record_then_the_bot_places(*args):  # the bot creates an ETHUSDT trade in the middle of the sync
            TradeFactory(account=account, symbol="ETHUSDT", price=Decimal("3000"))
            return real_record(*args)

        monkeypatch.setattr(positions, "_record_orphan", record_then_the_bot_places)
        report = sync_positions_with_binance(account)  # seen twice, but now a pending trade may explain it

        assert report["outcome"] == "ok" and report["extra"]["recovered"] == 0
        assert OrphanPosition.objects.get().status == "open"

    def test_a_pending_trade_older_than_the_reconcile_window_blocks_recovery(self, binance, account, settings):
        settings.SYNC_RECOVER_MISSING_POSITIONS = True
        settings.RECONCILE_MAX_AGE_SEC = 60
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        Trade.objects.filter(pk=trade.pk).update(created_at=timezone.now() - timedelta(days=2))  # the deep pass's
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

        for _ in range(2):
            assert sync_positions_with_binance(account)["extra"]["recovered"] == 0
        assert Trade.objects.count() == 1

    def test_an_operator_cannot_recover_a_gap_that_pending_or_changed_trades_explain(self, binance, account):
        opened_trade(binance, account, "0.010")
        with BinanceFuturesClient.for_account(account) as client:
            client.place_order("BTCUSDT", "BUY", Decimal("0.004"), order_type="MARKET")  # by hand
        sync_positions_with_binance(account)
        orphan = OrphanPosition.objects.get()

        pending = TradeFactory(account=account, symbol="BTCUSDT", price=Decimal("50000"))
        with pytest.raises(ValueError, match="pending BTCUSDT trades"):
            recover_orphan(orphan, source="admin", actor="desk")
        Trade.objects.filter(pk=pending.pk).update(status=Trade.Status.OPEN, filled_qty=Decimal("0.004"))  # its fill
        with pytest.raises(ValueError, match="changed since the position sync"):
            recover_orphan(orphan, source="admin", actor="desk")
        assert OrphanPosition.objects.get().status == "open" and Trade.objects.count() == 2

    def test_an_operator_cannot_recover_a_gap_where_our_trades_hold_more(self, binance, account):
        trade = opened_trade(binance, account, "0.010")
        # Our books say 0.014 (no exit fill explains the difference: a partial close would be applied instead).
        Trade.objects.filter(pk=trade.pk).update(filled_qty=Decimal("0.014"))
        sync_positions_with_binance(account)
        orphan = OrphanPosition.objects.get()
        assert orphan.quantity == Decimal("-0.004")  # the exchange holds 0.010 of our 0.014

        with pytest.raises(ValueError, match="hold more BTCUSDT than the exchange"):
            recover_orphan(orphan, source="admin", actor="desk")
        assert list(Trade.objects.values_list("pk", flat=True)) == [trade.pk]

    def test_a_trade_opened_while_positions_are_read_is_not_closed(self, binance, account):
        """Found by the soak: the stream opened a trade between Binance's positions answer and the DB read, and the
        sync closed it on the strength of a snapshot that predated its fill."""
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)

        def fill_and_apply():  # the fill happens, and the stream applies it, just after Binance answered
            binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
            with BinanceFuturesClient.for_account(account) as other:
                apply_order_snapshot(
                    Trade.objects.get(pk=trade.pk),
                    other.get_order_by_client_order_id("BTCUSDT", trade.client_order_id),
                    "ws",
                )

        report = sync_positions_with_binance(
            account, client=RaceAtPositionRead(BinanceFuturesClient.for_account(account), after=fill_and_apply)
        )

        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN and report["extra"]["closed"] == 0
        assert sync_positions_with_binance(account)["extra"]["in_sync"] == 1

    def test_partially_filled_pending_trade_explains_its_part(self, binance, account):
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.004")

        report = sync_positions_with_binance(account)  # reconciles pending first: filled_qty 0.004 counts

        assert report["progress"] == 1 and report["extra"]["in_sync"] == 1
        assert not OrphanPosition.objects.exists()


class RaceAtPositionRead:
    """A gateway where something happens (a fill, the stream applying it) right before or right after Binance's
    positions answer: the race between Binance's snapshot and the database, made deterministic."""

    def __init__(self, client, *, before=None, after=None):
        self._client, self._before, self._after = client, before, after

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_positions(self):
        if self._before:
            self._before()
        positions = self._client.get_positions()
        if self._after:
            self._after()
        return positions


class TestCancelAndVerify:
    def test_clean_cancel_then_verification_cancels(self, binance, account):
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)

        assert cancel_trade_order(trade)["outcome"] == "cancelled"
        report = verify_after_cancel(trade)

        trade.refresh_from_db()
        assert trade.status == Trade.Status.CANCELLED
        assert report["still_working"] is False
        assert TradeEvent.objects.filter(trade=trade).count() == 1

    def test_f4_cancel_loses_the_race_verification_opens_the_trade(self, binance, account):
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.arm_cancel_race(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

        cancelled = cancel_trade_order(trade)
        assert cancelled["outcome"] == "unknown_order"  # -2011: the seed returned "not filled" here
        assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING

        report = verify_after_cancel(trade)

        trade.refresh_from_db()
        assert report["result"] == rules.OPENED
        assert (trade.status, trade.filled_qty) == ("open", Decimal("0.010"))
        assert list(TradeEvent.objects.filter(trade=trade).values_list("source", flat=True)) == ["cancel_verify"]

    def test_f5_partial_fill_then_cancel_opens_with_the_partial_quantity(self, binance, account):
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.006")

        cancel_trade_order(trade)
        verify_after_cancel(trade)

        trade.refresh_from_db()
        assert (trade.status, trade.filled_qty) == ("open", Decimal("0.006"))
        assert TradeEvent.objects.filter(trade=trade, to_status="open").count() == 1

    def test_cancel_that_did_not_reach_binance_shows_still_working(self, binance, account):
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.inject_fault("/fapi/v1/order", "503", count=1, method="DELETE")

        with pytest.raises(ExchangeUnavailable):
            cancel_trade_order(trade)
        report = verify_after_cancel(trade)

        assert report["still_working"] is True and report["exchange_status"] == "NEW"
        assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING

    def test_f25_cancel_answer_opens_without_a_price_and_the_verification_fills_it_in(self, binance, account):
        """Binance's cancel answer has no avgPrice (2026-07): the partial fill opens the trade without an entry
        price; the look-up that follows every cancel carries it, and fills it in without a second event."""
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.fill_order(
            account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, qty="0.004", price="49990"
        )

        assert cancel_trade_order(trade)["result"] == rules.OPENED
        trade.refresh_from_db()
        assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.004"), None)

        assert verify_after_cancel(trade)["result"] == rules.PRICED
        trade.refresh_from_db()
        assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.004"), Decimal("49990"))
        assert list(TradeEvent.objects.filter(trade=trade).values_list("from_status", "to_status")) == [
            ("pending", "open")
        ]
        assert verify_after_cancel(trade)["result"] == rules.IGNORED  # priced once; nothing more to do

    @pytest.mark.parametrize("kind", ["408", "408_placed"])
    def test_f26_408_on_cancel_is_unknown_and_the_verification_decides(self, binance, account, kind):
        trade = TradeFactory(account=account, price=Decimal("50000"))
        place(trade)
        binance.control.inject_fault("/fapi/v1/order", kind, count=1, method="DELETE")

        with pytest.raises(ExchangeUnavailable) as caught:
            cancel_trade_order(trade)
        assert caught.value.execution_unknown and caught.value.status == 408
        report = verify_after_cancel(trade)

        assert report["exchange_status"] == ("CANCELED" if kind == "408_placed" else "NEW")
        expected = Trade.Status.CANCELLED if kind == "408_placed" else Trade.Status.PENDING
        assert Trade.objects.get(pk=trade.pk).status == expected


class TestPlacement:
    def test_limit_order_is_placed_once_and_its_order_id_noted(self, binance, account):
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))

        assert place_entry_order(trade)["outcome"] == "placed"
        assert place_entry_order(trade)["outcome"] == "already_attempted"  # a re-delivered task

        trade.refresh_from_db()
        assert (trade.status, trade.exchange_status) == ("pending", "NEW") and trade.entry_order_id
        assert trade.placed_at is not None  # the not-found grace runs from here
        assert binance.control.stats()["requests"]["POST /fapi/v1/order"] == 1

    def test_placements_go_on_after_a_429_on_the_ip_but_not_during_a_418_ban(self, binance, account):
        budget, host = shared_budget(), binance.rest_url.split("//")[1]
        with BinanceFuturesClient.for_account(account) as client:
            is_hedge_mode(account, client)  # the account's mode is known: the placements' only call is the order
        until = int(time.time() * 1000) + 60_000
        budget.mark_limited(f"default@{host}", until, banned=False)  # a reconcile somewhere got a 429
        first = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))
        assert place_entry_order(first)["outcome"] == "placed"  # weight 0: Binance serves it
        budget.mark_limited(f"default@{host}", until + 1, banned=True)  # then the IP is banned
        second = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))
        assert place_entry_order(second)["outcome"] == "rejected"  # nothing sent: a definite no
        second.refresh_from_db()
        assert second.status == Trade.Status.FAILED and "rate limited (not sent)" in second.status_reason
        assert binance.control.stats()["requests"]["POST /fapi/v1/order"] == 1

    def test_market_order_placed_then_reconciled_opens(self, binance, account):
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"))
        place_entry_order(trade)  # Binance answers NEW (ACK) even for MARKET; the fill is seen on the next look

        reconcile_pending(account)

        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN

    def test_unknown_outcome_stays_pending_and_reconcile_finds_the_order(self, binance, account):
        binance.control.inject_fault("/fapi/v1/order", "503_unknown_placed", count=1, method="POST")
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))

        assert place_entry_order(trade)["outcome"] == "unknown"
        assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        reconcile_pending(account)

        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN

    @pytest.mark.parametrize("kind", ["408", "408_placed"])
    def test_f26_408_on_placement_stays_pending_and_is_resolved_by_client_order_id(
        self, binance, account, settings, kind
    ):
        binance.control.inject_fault("/fapi/v1/order", kind, count=1, method="POST")
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))

        assert place_entry_order(trade)["outcome"] == "unknown"  # not "rejected", whatever code the body carries
        assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING
        if kind == "408_placed":
            binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        settings.PENDING_NOT_FOUND_GRACE_SEC = 0
        reconcile_pending(account)

        trade.refresh_from_db()
        assert trade.status == (Trade.Status.OPEN if kind == "408_placed" else Trade.Status.FAILED)
        assert binance.control.stats()["requests"]["POST /fapi/v1/order"] == 1  # never sent twice

    def test_f19_placement_on_a_host_2s_ahead_of_binance_is_sent_once_and_succeeds(self, binance, account):
        binance.control.set_clock_offset(-2_000)  # our timestamps 2 s ahead: Binance refuses > 1 s ahead (-1021)
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))

        assert place_entry_order(trade)["outcome"] == "placed"
        assert binance.control.stats()["requests"]["POST /fapi/v1/order"] == 1  # synced first, nothing refused

    def test_f19_placement_refused_1021_is_resent_once_after_a_resync(self, binance, account):
        with BinanceFuturesClient.for_account(account) as client:
            client.get_open_orders("BTCUSDT")  # the process's clock offset is known (and right) now
            is_hedge_mode(account, client)  # and the account's position mode: the placement's only call is the order
        binance.control.set_clock_offset(-2_000)  # then the host drifts 2 s ahead
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"))

        assert place_entry_order(trade)["outcome"] == "placed"
        assert binance.control.stats()["requests"]["POST /fapi/v1/order"] == 2  # -1021, re-sync, resent
        assert Trade.objects.get(pk=trade.pk).exchange_status == "NEW"

    def test_definite_refusal_fails_with_binances_reason(self, binance, account):
        trade = create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.0001"), Decimal("50000"))  # < min qty

        assert place_entry_order(trade)["outcome"] == "rejected"

        trade.refresh_from_db()
        assert trade.status == Trade.Status.FAILED
        assert trade.status_reason.startswith("rejected by exchange: -")
