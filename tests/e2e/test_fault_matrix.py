"""The fault matrix (docs/DESIGN.md), one test per row, on the real stack: the sandbox over HTTP/WebSocket, two Celery
worker processes and the user stream as subprocesses, MariaDB and Redis. After each fault stops, the test waits
(with a deadline) for quiescence and checks the invariant: every trade agrees with the exchange's order, one audit
event per transition, every exchange position explained or reported as an orphan."""

import json
import os
import signal
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection, connections, transaction

from reconciliation import tasks
from reconciliation.models import OrphanPosition, ReconcileRun
from tests.helpers import as_ws
from tradeops.celery import app
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade, TradeEvent

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
# The rows here silence accounts' sockets (pause_events) to drive the REST paths, while the stream still looks
# healthy: every beat audits every account, as with no healthy stream. The audit cadence has its own end-to-end test
# (test_stream_guards.py).
STACK_ENV = {"RECONCILE_AUDIT_SEC": "0"}

FAR = 600  # an entry timeout that does not fire during the test


def open_position(e2e, account, *, symbol="BTCUSDT", qty="0.010", price="50000", timeout_sec=FAR):
    """The bot's flow: enqueue open_position; return the trade once its order rests on the exchange."""
    cid = f"e2e-{uuid.uuid4().hex[:20]}"
    tasks.open_position.delay(account.pk, symbol, "BUY", qty, price, timeout_sec=timeout_sec, client_order_id=cid)
    trade = wait_for(
        lambda: Trade.objects.filter(client_order_id=cid).exclude(exchange_status__in=["", "PLACING"]).first(),
        message=f"{cid} placed",
    )
    return trade


def fill(e2e, trade, **kw):
    e2e.control.fill_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id, **kw)


def filled_unseen(e2e, account, n=1):
    """n positions the bot opened whose fills never reach the DB by push (the account's events are paused): only a
    reconcile can find them."""
    trades = [open_position(e2e, account) for _ in range(n)]
    e2e.control.pause_events(account.api_key)
    for trade in trades:
        fill(e2e, trade)
    return trades


def status_of(trade):
    return Trade.objects.get(pk=trade.pk).status


def test_f1_fill_lost_while_the_bot_was_down_periodic_reconcile_opens_it(e2e):
    account = e2e.account()
    [trade] = filled_unseen(e2e, account)  # nothing reaches the DB by push
    assert status_of(trade) == Trade.Status.PENDING

    e2e.start_beat()

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="periodic reconcile opened it")
    e2e.settle()


def test_f2_fill_while_the_stream_is_down_reconcile_on_reconnect_opens_it(e2e):
    account = e2e.account()
    connects = ReconcileRun.objects.filter(account=account, reason="ws_connect", kind=ReconcileRun.Kind.PENDING)
    trade = open_position(e2e, account)
    e2e.stack.kill("stream")  # crash: no close frame, no listenKey close
    before = connects.count()
    fill(e2e, trade)

    e2e.stack.start_stream()

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="reconcile on reconnect opened it")
    assert connects.count() > before
    e2e.settle()


def test_f3_listen_key_expired_new_key_reconnect_reconcile(e2e):
    account = e2e.account()
    old_key = e2e.control.listen_keys(account.api_key)["listen_key"]
    trade = open_position(e2e, account)
    e2e.control.pause_events(account.api_key)
    fill(e2e, trade)  # lost: events paused
    e2e.control.resume_events(account.api_key)

    e2e.control.expire_listen_key(account.api_key)  # listenKeyExpired, socket closed, keepalive → -1125

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="reconciled after the new subscribe")
    new_key = wait_for(lambda: e2e.control.listen_keys(account.api_key)["listen_key"], message="new key")
    assert new_key != old_key
    e2e.settle()


def test_f4_cancel_loses_the_race_chained_verification_opens_the_trade(e2e):
    account = e2e.account()
    e2e.control.arm_cancel_race(account.api_key)  # the account's next cancel: fill first, then -2011
    trade = open_position(e2e, account, timeout_sec=1)  # entry timeout → cancel_and_verify

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="verification opened it")
    e2e.settle()


@pytest.mark.parametrize("end", ["timeout_cancel", "EXPIRED"])
def test_f5_partial_fill_then_cancel_or_expire_opens_with_the_partial_quantity(e2e, end):
    account = e2e.account()
    trade = open_position(e2e, account, timeout_sec=3 if end == "timeout_cancel" else FAR)
    fill(e2e, trade, qty="0.004")
    if end == "EXPIRED":
        e2e.control.expire_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="opened with the partial quantity")
    assert Trade.objects.get(pk=trade.pk).filled_qty == Decimal("0.004")
    e2e.settle()


def test_f6_duplicate_and_out_of_order_events_one_transition_no_regression(e2e):
    account = e2e.account()
    trade = open_position(e2e, account)
    fill(e2e, trade, qty="0.004")
    older = e2e.control.get_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    e2e.control.advance_clock(1000)
    fill(e2e, trade)
    newest = e2e.control.get_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="opened by the stream")

    for payload in (newest, newest, older, newest, older):  # duplicates, and a partial after the fill
        e2e.control.push_raw(account.api_key, json.dumps(as_ws({k: v for k, v in payload.items() if k != "archived"})))
    tasks.reconcile_account.delay(account.pk, reason="e2e")  # and the other paths, overlapping
    tasks.cancel_and_verify.delay(trade.pk)
    wait_for(lambda: ReconcileRun.objects.filter(account=account, reason="e2e").exists(), message="reconcile ran")

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty) == ("open", Decimal("0.010"))
    assert list(TradeEvent.objects.filter(trade=trade).values_list("from_status", "to_status")) == [
        ("pending", "pending"),
        ("pending", "open"),
    ]
    e2e.settle()


def test_f7_not_found_right_after_placing_stays_pending_inside_the_grace_period(e2e):
    account = e2e.account()
    e2e.control.set_not_found_window(2_000)  # -2013 for orders younger than 2 s (grace is 3 s)
    e2e.control.pause_events(account.api_key)
    e2e.start_beat()
    # Beat is ticking before the order exists: its next reconcile then comes within the 2 s, however slowly the beat
    # process started on a loaded machine.
    wait_for(lambda: ReconcileRun.objects.filter(account=account).exists(), message="beat's first reconcile")
    trade = open_position(e2e, account)
    wait_for(
        lambda: ReconcileRun.objects.filter(account=account, report__not_found_in_grace__gte=1).exists(),
        message="a reconcile saw -2013",
    )
    fill(e2e, trade)

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="opened once visible")
    assert not TradeEvent.objects.filter(trade=trade, to_status="failed").exists()
    e2e.settle()


def test_f8_crash_before_place_fails_after_the_grace_period_with_reason(e2e):
    account = e2e.account()
    # The bot created the pending row and died before placing it: Binance never saw the order.
    trade = Trade.objects.create(
        account=account,
        symbol="BTCUSDT",
        side="BUY",
        quantity=Decimal("0.010"),
        price=Decimal("50000"),
        client_order_id=f"e2e-{uuid.uuid4().hex[:20]}",
    )
    e2e.start_beat()

    wait_for(lambda: status_of(trade) == Trade.Status.FAILED, message="failed after the grace period")
    assert Trade.objects.get(pk=trade.pk).status_reason == "not found on exchange"
    e2e.settle()


def test_f9_rate_limits_server_errors_and_timeouts_back_off_and_lose_nothing(e2e):
    account = e2e.account()
    trades = filled_unseen(e2e, account, 3)
    control = e2e.control
    control.inject_fault("/fapi/v1/order", "502", count=2, method="GET")
    control.inject_fault("/fapi/v1/order", "503", count=1, method="GET")
    control.inject_fault("/fapi/v1/order", "hang", count=1, method="GET", hang_sec=3)  # past the 2 s timeout
    control.inject_fault("/fapi/v1/order", "429", count=1, method="GET", retry_after=2)
    control.inject_fault("/fapi/v1/order", "418", count=1, method="GET", retry_after=3)

    tasks.reconcile_account.delay(account.pk, reason="e2e")

    wait_for(lambda: all(status_of(t) == Trade.Status.OPEN for t in trades), timeout=90, message="all opened")
    assert ReconcileRun.objects.filter(account=account, outcome="partial").exists()  # rate limited: retried later
    e2e.settle()


def test_f10_lock_wait_timeouts_are_retried_then_the_update_lands(e2e):
    account = e2e.account()
    [trade] = filled_unseen(e2e, account)
    locked, release = threading.Event(), threading.Event()

    def hold_row_lock():
        try:
            with transaction.atomic():
                Trade.objects.select_for_update().get(pk=trade.pk)
                locked.set()
                release.wait(20)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_row_lock)
    holder.start()
    assert locked.wait(10)
    try:
        assert status_of(trade) == Trade.Status.PENDING  # so the reconcile below must wait on the lock
        tasks.reconcile_account.delay(account.pk, reason="e2e")
        wait_for(
            lambda: (
                "Lock wait timeout" in e2e.stack.log("worker1") + e2e.stack.log("worker2")
                or "transient DB error 1205" in e2e.stack.log("worker1") + e2e.stack.log("worker2")
            ),
            timeout=60,
            message="a lock-wait timeout hit the worker",
        )
    finally:
        release.set()
        holder.join()

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, timeout=90, message="opened after the lock went")
    e2e.settle()


def test_f10_lost_database_connections_are_reopened(e2e):
    account = e2e.account()
    [trade] = filled_unseen(e2e, account)
    with connections["default"].cursor() as cursor:  # kill every other connection of ours (workers, stream)
        cursor.execute("SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND db = DATABASE()")
        for (pid,) in cursor.fetchall():
            cursor.execute(f"KILL {int(pid)}")

    tasks.reconcile_account.delay(account.pk, reason="e2e")

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, timeout=90, message="opened on fresh connections")
    e2e.settle()


def test_f11_worker_killed_mid_task_is_redelivered_same_end_state(e2e):
    account = e2e.account()
    [trade] = filled_unseen(e2e, account)
    e2e.control.reset_stats()
    e2e.control.inject_fault("/fapi/v1/order", "hang", count=1, method="GET", hang_sec=1.8)

    tasks.reconcile_account.delay(account.pk, reason="e2e")
    wait_for(lambda: e2e.control.stats()["requests"].get("GET /fapi/v1/order"), message="the task is mid-request")
    for worker in ("worker1", "worker2"):  # SIGKILL the pool processes: the task dies mid-flight
        for pid in e2e.stack.pool_children(worker):
            os.kill(pid, signal.SIGKILL)

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, timeout=120, message="redelivered task opened it")
    e2e.settle()


def countdown_holder(trade):
    """The worker holding the trade's entry-timeout countdown (an ETA task reserved, unacked), or None."""
    scheduled = app.control.inspect(timeout=1).scheduled() or {}
    for worker, entries in scheduled.items():
        for entry in entries:
            request = entry["request"]
            if request["name"] == "reconciliation.tasks.entry_timeout" and request["args"] == [trade.pk]:
                return worker
    return None


@pytest.mark.parametrize("how", ["warm_restart", "crash"])
def test_f11_workers_restarted_while_the_entry_timeout_counts_down_the_timeout_still_fires(e2e, how):
    account = e2e.account()
    trade = open_position(e2e, account, timeout_sec=5)  # nobody fills it: the entry timeout must cancel it
    wait_for(lambda: countdown_holder(trade), message="a worker holds the entry-timeout countdown")

    readies = {name: e2e.stack.log(name).count("ready.") for name in ("worker1", "worker2")}
    for name in ("worker1", "worker2"):
        if how == "crash":
            e2e.stack.kill(name)  # the countdown dies with the process, unacked
        else:
            e2e.stack.stop(name)  # warm shutdown: what a deploy does
    assert status_of(trade) == Trade.Status.PENDING
    for name in ("worker1", "worker2"):
        e2e.stack.start_worker(name)
    for name in ("worker1", "worker2"):
        wait_for(
            lambda name=name: e2e.stack.log(name).count("ready.") > readies[name], timeout=60, message=f"{name} back"
        )

    # Redis hands the countdown back (at once after a warm shutdown, after the visibility timeout after a crash).
    wait_for(lambda: status_of(trade) == Trade.Status.CANCELLED, timeout=90, message="the entry timeout cancelled it")
    assert Trade.objects.get(pk=trade.pk).exchange_status == "CANCELED"
    e2e.settle()


def test_f12_two_reconciles_of_one_account_at_once_one_runs_one_skips(e2e):
    account = e2e.account()  # the stream's own reconcile is done: only the two below compete for the lease
    trades = filled_unseen(e2e, account, 2)
    e2e.control.inject_fault("/fapi/v1/order", "hang", count=1, method="GET", hang_sec=1.5)  # keep the first busy

    tasks.reconcile_account.delay(account.pk, reason="beat")
    tasks.reconcile_account.delay(account.pk, reason="beat")

    runs = ReconcileRun.objects.filter(account=account, reason="beat")
    wait_for(lambda: runs.count() >= 2, message="both ran")
    outcomes = sorted(runs.values_list("outcome", flat=True))
    assert outcomes in (["ok", "skipped"], ["error", "skipped"]), outcomes
    e2e.start_beat()  # anything the hang left behind
    e2e.settle()
    for trade in trades:
        assert TradeEvent.objects.filter(trade=trade).count() == 1


def test_f13_malformed_and_foreign_payloads_are_skipped_and_the_stream_keeps_going(e2e):
    account = e2e.account()
    trade = open_position(e2e, account)
    for raw in [
        "not json",
        "{",
        "[]",
        '{"e": "SOMETHING_NEW"}',
        '{"e": "ORDER_TRADE_UPDATE"}',
        '{"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTCUSDT", "X": "FILLED", "i": 1, "c": "not-ours", '
        '"z": "1", "ap": "1", "T": 1}}',
        '{"e": "ORDER_TRADE_UPDATE", "o": {"X": 5}}',
    ]:
        e2e.control.push_raw(account.api_key, raw)

    fill(e2e, trade)

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="the good event after the bad ones applied")
    e2e.stack.assert_alive("stream")
    assert "not-ours" in e2e.stack.log("stream")
    e2e.settle()


def test_f14_exchange_position_with_no_trade_is_reported_as_an_orphan(e2e):
    account = e2e.account()
    with BinanceFuturesClient.for_account(account) as client:  # someone traded by hand
        client.place_order("ETHUSDT", "SELL", Decimal("0.5"), order_type="MARKET")

    orphan = wait_for(
        lambda: OrphanPosition.objects.filter(account=account, symbol="ETHUSDT").first(),
        message="orphan reported (ACCOUNT_UPDATE → position sync)",
    )
    assert (orphan.quantity, orphan.status) == (Decimal("-0.5"), "open")
    assert not Trade.objects.filter(account=account).exists()  # not recovered: the setting is off
    e2e.settle()


def test_f15_open_trade_whose_position_is_gone_is_closed(e2e):
    account = e2e.account()
    trade = open_position(e2e, account, price=None)  # MARKET
    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="opened")
    with BinanceFuturesClient.for_account(account) as client:  # closed by hand on the exchange
        client.place_order("BTCUSDT", "SELL", Decimal("0.010"), order_type="MARKET", reduce_only=True)

    wait_for(lambda: status_of(trade) == Trade.Status.CLOSED, message="closed by position sync")
    e2e.settle()


def test_f16_same_client_order_id_in_two_accounts_each_reconciled_with_its_own_keys(e2e):
    first, second = e2e.account(), e2e.account()
    cid = f"e2e-{uuid.uuid4().hex[:20]}"
    for account in (first, second):
        e2e.control.pause_events(account.api_key)
        tasks.open_position.delay(account.pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=FAR, client_order_id=cid)
    a, b = (
        wait_for(
            lambda acct=acct: Trade.objects.filter(account=acct, client_order_id=cid, exchange_status="NEW").first(),
            message="placed",
        )
        for acct in (first, second)
    )
    fill(e2e, a)

    e2e.start_beat()

    wait_for(lambda: status_of(a) == Trade.Status.OPEN, message="the first account's trade opened")
    e2e.settle()
    assert status_of(b) == Trade.Status.PENDING
