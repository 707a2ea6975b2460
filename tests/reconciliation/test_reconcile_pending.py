"""reconcile_pending against the sandbox over HTTP: the fault-matrix rows it owns (F1, F5, F7, F8, F9, F12, F16),
paging, the weight strategy and budget, and the cost in DB queries."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reconciliation.models import ReconcileRun
from reconciliation.orders import rules
from reconciliation.reconcile.leases import account_lease
from reconciliation.services import apply_order_snapshot, reconcile_pending
from tests.factories import TradeFactory
from tests.helpers import place
from trades.egress import shared_budget
from trades.models import Trade, TradeEvent

pytestmark = pytest.mark.django_db


def pending(account, n=1, symbol="BTCUSDT", **fields):
    fields.setdefault("price", Decimal("50000"))
    return [TradeFactory(account=account, symbol=symbol, **fields) for _ in range(n)]


def fill(binance, trade, **kw):
    binance.control.fill_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id, **kw)


def test_f1_crash_after_place_order_fills_later_reconcile_opens_it(binance, account):
    [trade] = pending(account)
    place(trade)  # … and the bot crashed here: no REST wait, no WebSocket
    fill(binance, trade, price="50001")

    report = reconcile_pending(account, reason="beat")

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.010"), Decimal("50001"))
    assert report["opened"] == 1 and report["checked"] == 1 and report["outcome"] == "ok"
    assert TradeEvent.objects.filter(trade=trade, source="reconcile").count() == 1
    assert ReconcileRun.objects.filter(account=account, reason="beat", outcome="ok").count() == 1


def test_second_reconcile_changes_nothing(binance, account):
    [trade] = pending(account)
    place(trade)
    fill(binance, trade)
    reconcile_pending(account)

    report = reconcile_pending(account)

    assert report["checked"] == 0  # no pending trade left
    assert TradeEvent.objects.filter(trade=trade).count() == 1


def test_f5_partial_fill_then_cancel_opens_with_the_partial_quantity(binance, account):
    [trade] = pending(account)
    place(trade)
    fill(binance, trade, qty="0.004")
    binance.control.cancel_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

    reconcile_pending(account)

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty) == ("open", Decimal("0.004"))


def test_f7_not_found_right_after_placing_stays_pending_in_grace(binance, account, settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 120
    binance.control.set_not_found_window(60_000)  # Binance's eventual consistency right after placing
    [trade] = pending(account)
    place(trade)

    report = reconcile_pending(account)

    trade.refresh_from_db()
    assert trade.status == Trade.Status.PENDING
    assert report["not_found_in_grace"] == 1 and report["failed"] == 0
    assert not TradeEvent.objects.filter(trade=trade).exists()


def test_f8_never_placed_fails_after_the_grace_period_with_reason(binance, account, settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 120
    [young] = pending(account)
    [old] = pending(account, created_at=timezone.now() - timedelta(seconds=300))

    report = reconcile_pending(account)

    young.refresh_from_db()
    old.refresh_from_db()
    assert young.status == Trade.Status.PENDING
    assert (old.status, old.status_reason) == ("failed", rules.NOT_FOUND_REASON)
    assert report["failed"] == 1 and report["not_found_in_grace"] == 1


def test_f16_same_client_order_id_in_two_accounts_each_with_its_own_keys(binance, make_account):
    first, second = make_account(), make_account()
    [a] = pending(first)
    [b] = pending(second, client_order_id=a.client_order_id)
    place(a)
    place(b)
    fill(binance, a)  # only the first account's order fills

    reconcile_pending(first)
    reconcile_pending(second)

    a.refresh_from_db()
    b.refresh_from_db()
    assert a.status == Trade.Status.OPEN
    assert (b.status, b.exchange_status) == ("pending", "NEW")
    assert a.entry_order_id != b.entry_order_id


def test_trade_without_any_order_reference_is_flagged_once_not_guessed(binance, account):
    [trade] = pending(account, client_order_id=None)

    first = reconcile_pending(account)
    reconcile_pending(account)

    trade.refresh_from_db()
    assert (trade.status, trade.needs_operator) == ("pending", True)
    assert first["needs_operator"] == 1
    [event] = TradeEvent.objects.filter(trade=trade)
    assert event.payload["flag"] == "needs_operator"


def test_pages_through_every_pending_trade(binance, account, settings):
    settings.RECONCILE_PAGE_SIZE = 3
    settings.RECONCILE_PER_ORDER_MAX = 100  # per-order path, so every trade is one look-up
    trades = pending(account, 7)
    for trade in trades:
        place(trade)
        fill(binance, trade)

    report = reconcile_pending(account)

    assert report["checked"] == 7 and report["opened"] == 7
    assert set(Trade.objects.filter(account=account).values_list("status", flat=True)) == {"open"}


def test_old_pending_trades_are_left_to_the_deep_pass_not_ignored(binance, account, settings):
    settings.RECONCILE_MAX_AGE_SEC = 3600
    [old] = pending(account)
    place(old)
    fill(binance, old)
    Trade.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=5))

    assert reconcile_pending(account)["checked"] == 0
    report = reconcile_pending(account, reason="deep", deep=True)

    old.refresh_from_db()
    assert old.status == Trade.Status.OPEN
    assert report["kind"] == "deep" and report["opened"] == 1


class TestWeight:
    def test_many_trades_on_a_symbol_cost_one_all_orders_call(self, binance, account):
        trades = pending(account, 20, symbol="BTCUSDT") + pending(account, 2, symbol="ETHUSDT", price=Decimal("3000"))
        for trade in trades:
            place(trade)
        for trade in trades[:15]:
            fill(binance, trade)
        binance.control.reset_stats()

        report = reconcile_pending(account)

        stats = binance.control.stats()
        requests = stats["requests"]
        assert requests.get("GET /fapi/v1/allOrders") == 1
        assert requests.get("GET /fapi/v1/order") == 2  # the two ETHUSDT trades, one each
        n, s = 22, 2
        assert stats["total_weight"] <= min(n, 5 * s) + 2
        assert report["weight_used"] == stats["total_weight"]
        assert report["opened"] == 15 and report["noted"] == 7

    def test_500_pending_over_5_symbols_cost_at_most_min_n_5s_plus_2(self, binance, account):
        symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
        for symbol in symbols:
            bulk = binance.control.bulk_orders(
                account.api_key, symbol, 100, price="1", quantity="10", client_order_id_prefix=f"w{symbol}-"
            )
            Trade.objects.bulk_create(
                [
                    Trade(
                        account=account,
                        symbol=symbol,
                        side="BUY",
                        quantity=Decimal("10"),
                        price=Decimal("1"),
                        client_order_id=f"w{symbol}-{order_id}",
                    )
                    for order_id in range(bulk["first_order_id"], bulk["last_order_id"] + 1)
                ]
            )
        binance.control.reset_stats()

        report = reconcile_pending(account)

        assert report["checked"] == 500 and report["errors"] == 0
        assert binance.control.stats()["total_weight"] <= min(500, 5 * 5) + 2

    def test_stops_early_at_the_weight_budget_and_finishes_on_the_next_run(self, binance, account, settings):
        settings.RECONCILE_PER_ORDER_MAX = 100
        settings.RECONCILE_WEIGHT_BUDGET = 3
        trades = pending(account, 6)
        for trade in trades:
            place(trade)
            fill(binance, trade)
        binance.control.reset_stats()

        report = reconcile_pending(account)

        assert report["stopped_early"] is True and report["outcome"] == "partial"
        assert 0 < report["opened"] < 6
        assert binance.control.stats()["total_weight"] <= 3
        binance.control.reset_stats()  # a new minute
        settings.RECONCILE_WEIGHT_BUDGET = 1920
        reconcile_pending(account)
        assert set(Trade.objects.filter(account=account).values_list("status", flat=True)) == {"open"}

    def test_f9_rate_limited_stops_with_retry_after_and_loses_nothing(self, binance, account):
        trades = pending(account, 2)
        for trade in trades:
            place(trade)
            fill(binance, trade)
        binance.control.inject_fault("/fapi/v1/order", "429", count=1, method="GET")

        report = reconcile_pending(account)

        assert report["stopped_early"] is True and report["retry_after"] > 0
        assert set(Trade.objects.filter(account=account).values_list("status", flat=True)) == {"pending"}
        sent = binance.control.stats()["total_requests"]
        again = reconcile_pending(account)  # before Retry-After: stops again without asking Binance
        assert again["stopped_early"] is True and binance.control.stats()["total_requests"] == sent
        shared_budget().clear()  # Retry-After has passed
        assert reconcile_pending(account)["opened"] == 2

    def test_f9_server_error_on_one_look_up_is_counted_and_the_rest_go_on(self, binance, account):
        trades = pending(account, 3)
        for trade in trades:
            place(trade)
            fill(binance, trade)
        binance.control.inject_fault("/fapi/v1/order", "502", count=1, method="GET")

        report = reconcile_pending(account)

        assert report["errors"] == 1 and report["opened"] == 2 and report["outcome"] == "error"
        assert reconcile_pending(account)["opened"] == 1


def test_db_queries_do_not_grow_with_the_number_of_pending_trades(binance, account, settings):
    """N = 50 and N = 500 unchanged pending trades: the same queries (no trade changes, so no writes)."""
    settings.RECONCILE_PAGE_SIZE = 1000

    def queries_for(n, symbol):
        bulk = binance.control.bulk_orders(
            account.api_key, symbol, n, price="100", quantity="1", client_order_id_prefix=f"q{n}-"
        )
        Trade.objects.bulk_create(
            [
                Trade(
                    account=account,
                    symbol=symbol,
                    side="BUY",
                    quantity=Decimal("1"),
                    price=Decimal("100"),
                    client_order_id=f"q{n}-{order_id}",
                    entry_order_id=order_id,
                    exchange_status="NEW",
                    exchange_update_time=0,
                )
                for order_id in range(bulk["first_order_id"], bulk["last_order_id"] + 1)
            ]
        )
        reconcile_pending(account)  # notes each order's updateTime once
        with CaptureQueriesContext(connection) as ctx:
            report = reconcile_pending(account)
        assert report["unchanged"] == report["checked"]
        Trade.objects.filter(symbol=symbol).update(status=Trade.Status.CANCELLED)
        return len(ctx.captured_queries)

    assert queries_for(50, "BTCUSDT") == queries_for(500, "ETHUSDT")


def test_f12_a_second_reconcile_while_one_runs_skips_without_touching_binance(binance, account):
    [trade] = pending(account)
    place(trade)
    fill(binance, trade)
    binance.control.reset_stats()

    with account_lease(account.pk) as held:
        assert held
        report = reconcile_pending(account, reason="ws_connect")

    assert report["skipped"] is True and report["outcome"] == "skipped"
    assert binance.control.stats()["total_requests"] == 0
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING
    assert reconcile_pending(account)["opened"] == 1  # the lease was released


def test_a_killed_workers_lease_runs_out(binance, account, settings):
    [trade] = pending(account)
    place(trade)
    fill(binance, trade)
    from reconciliation.models import AccountSyncState

    with account_lease(account.pk, seconds=60):
        # The worker "dies" holding the lease: pretend it expired.
        AccountSyncState.objects.filter(account=account).update(lease_until=timezone.now() - timedelta(seconds=1))
        assert reconcile_pending(account)["opened"] == 1


@pytest.mark.django_db(transaction=True)
def test_f12_two_reconciles_racing_on_mariadb_one_runs_one_skips(mysql_only, binance, account):
    trades = pending(account, 5)
    for trade in trades:
        place(trade)
        fill(binance, trade)
    barrier = threading.Barrier(2)
    reports, errors = [], []

    def run():
        try:
            barrier.wait(timeout=10)
            reports.append(reconcile_pending(account, reason="race"))
        except Exception as exc:  # noqa: BLE001 — surfaced by the main thread's assert
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sorted(r["skipped"] for r in reports) == [False, True]
    assert sum(r["opened"] for r in reports) == 5
    for trade in trades:
        assert TradeEvent.objects.filter(trade=trade).count() == 1


def test_a_run_is_kept_with_when_it_started_and_how_long_it_took(binance, account):
    before = timezone.now()
    [trade] = pending(account)
    place(trade)
    binance.control.inject_fault("/fapi/v1/order", "hang", count=1, method="GET", hang_sec=0.3)

    reconcile_pending(account, reason="admin")

    run = ReconcileRun.objects.get(account=account)
    assert before <= run.started_at <= run.started_at + timedelta(milliseconds=run.duration_ms) <= timezone.now()
    assert run.duration_ms >= 300
    assert timezone.now() - run.started_at >= timedelta(milliseconds=300)  # stamped at the start, not the end
    assert (run.reason, run.outcome, run.report["checked"]) == ("admin", "ok", 1)


def test_reconcile_reports_past_the_retention_are_pruned_and_trade_audit_is_kept(binance, account, settings):
    settings.RECONCILE_RUN_RETENTION_DAYS = 7
    [trade] = pending(account)
    place(trade)
    fill(binance, trade)
    reconcile_pending(account)
    reconcile_pending(account)
    ReconcileRun.objects.filter(pk=ReconcileRun.objects.order_by("pk").first().pk).update(
        started_at=timezone.now() - timedelta(days=8)
    )
    from reconciliation.services import prune_reconcile_runs

    assert prune_reconcile_runs(batch=1) == 1

    assert ReconcileRun.objects.count() == 1
    assert TradeEvent.objects.filter(trade=trade).count() == 1


class TestOpenOrders:
    """Per symbol, one openOrders (weight 1) says which orders still rest; only the others are looked up."""

    @staticmethod
    def resting(account, binance, n, symbol, price="50000"):
        trades = pending(account, n, symbol=symbol, price=Decimal(price))
        for trade in trades:
            apply_order_snapshot(trade, place(trade), TradeEvent.Source.PLACE)  # the placement's answer: NEW
        return trades

    def test_n_pending_over_s_symbols_with_k_resting_cost_s_plus_n_minus_k(self, binance, account):
        symbols = {"BTCUSDT": "50000", "ETHUSDT": "3000", "BNBUSDT": "600"}
        books = {symbol: self.resting(account, binance, 4, symbol, price) for symbol, price in symbols.items()}
        for trades in books.values():
            fill(binance, trades[0])  # k = 3 per symbol still rest
        binance.control.reset_stats()

        report = reconcile_pending(account)

        stats = binance.control.stats()
        n, s, k = 12, 3, 9
        assert stats["requests"].get("GET /fapi/v1/openOrders") == s
        assert stats["requests"].get("GET /fapi/v1/order") == n - k
        assert stats["total_weight"] == s + (n - k) == report["weight_used"]
        assert (report["checked"], report["resting"], report["opened"]) == (n, k, s)
        assert report["errors"] == 0 and report["outcome"] == "ok"

    def test_the_old_way_would_have_cost_one_look_up_per_trade(self, binance, account, settings):
        """The baseline of the test above, same book: without openOrders, N look-ups."""
        for symbol, price in {"BTCUSDT": "50000", "ETHUSDT": "3000", "BNBUSDT": "600"}.items():
            fill(binance, self.resting(account, binance, 4, symbol, price)[0])
        binance.control.reset_stats()
        from reconciliation.reconcile import pending

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pending, "_worth_open_orders", lambda trades: False)
            report = reconcile_pending(account)

        assert binance.control.stats()["total_weight"] == 12 == report["weight_used"]

    def test_a_resting_partial_fill_is_recorded_from_open_orders(self, binance, account):
        trades = self.resting(account, binance, 2, "BTCUSDT")
        fill(binance, trades[0], qty="0.004", price="49999")
        binance.control.reset_stats()

        report = reconcile_pending(account)

        trades[0].refresh_from_db()
        assert binance.control.stats()["requests"] == {"GET /fapi/v1/openOrders": 1}
        assert (trades[0].status, trades[0].exchange_status) == ("pending", "PARTIALLY_FILLED")
        assert (trades[0].filled_qty, trades[0].entry_price) == (Decimal("0.004"), Decimal("49999"))
        assert report["progress"] == 1 and report["resting"] == 2 and report["weight_used"] == 1

    def test_an_order_missing_from_open_orders_is_looked_up_and_its_not_found_grace_holds(
        self, binance, account, settings
    ):
        settings.PENDING_NOT_FOUND_GRACE_SEC = 120
        self.resting(account, binance, 2, "BTCUSDT")
        [hidden] = pending(account)
        Trade.objects.filter(pk=hidden.pk).update(exchange_status="PLACING", placed_at=timezone.now())
        place(hidden)  # … its answer was lost; Binance rests it but does not show it yet (-2013, not in openOrders)
        binance.control.hide_order(account.api_key, "BTCUSDT", client_order_id=hidden.client_order_id, seconds=60)
        [never] = pending(account, created_at=timezone.now() - timedelta(seconds=300))  # never placed, past grace
        binance.control.reset_stats()

        report = reconcile_pending(account)

        hidden.refresh_from_db()
        never.refresh_from_db()
        assert binance.control.stats()["requests"] == {"GET /fapi/v1/openOrders": 1, "GET /fapi/v1/order": 2}
        assert (hidden.status, hidden.exchange_status) == ("pending", "PLACING")  # in its grace: not failed
        assert (never.status, never.status_reason) == ("failed", rules.NOT_FOUND_REASON)  # as without openOrders
        assert report["not_found_in_grace"] == 1 and report["failed"] == 1 and report["resting"] == 2

    def test_ended_orders_among_many_are_read_with_one_all_orders(self, binance, account, settings):
        settings.RECONCILE_PER_ORDER_MAX = 2
        trades = self.resting(account, binance, 6, "BTCUSDT")
        for trade in trades[:4]:
            fill(binance, trade)
        binance.control.reset_stats()

        report = reconcile_pending(account)

        stats = binance.control.stats()
        assert stats["requests"] == {"GET /fapi/v1/openOrders": 1, "GET /fapi/v1/allOrders": 1}
        assert stats["total_weight"] == 1 + 5 == report["weight_used"]
        assert report["opened"] == 4 and report["resting"] == 2

    def test_a_failed_open_orders_falls_back_to_a_look_up_per_order(self, binance, account):
        trades = self.resting(account, binance, 2, "BTCUSDT")
        fill(binance, trades[0])
        binance.control.inject_fault("/fapi/v1/openOrders", "502", count=1)
        binance.control.reset_stats()

        report = reconcile_pending(account)

        assert binance.control.stats()["requests"]["GET /fapi/v1/order"] == 2
        assert report["opened"] == 1 and report["errors"] == 0 and report["weight_used"] == 3

    def test_an_open_orders_answer_that_is_not_a_list_falls_back_to_a_look_up_per_order(
        self, binance, account, monkeypatch
    ):
        trades = self.resting(account, binance, 2, "BTCUSDT")
        fill(binance, trades[0])
        from trades.binance_client import BinanceFuturesClient

        monkeypatch.setattr(BinanceFuturesClient, "get_open_orders", lambda self, symbol=None: None)

        report = reconcile_pending(account)

        assert (report["opened"], report["resting"], report["checked"], report["errors"]) == (1, 0, 2, 0)
