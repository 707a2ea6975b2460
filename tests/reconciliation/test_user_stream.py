"""The user-data stream consumer (reconciliation.user_stream) against the sandbox's real WebSocket.

The consumer runs in-process on its own loop in a background thread (stream_helpers.StreamThread), with the Celery
enqueues replaced by in-process calls (the reconcile service runs at once, as a worker would); the process-level
test runs `manage.py run_user_stream` as a subprocess and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection
from kombu.exceptions import OperationalError as BrokerUnavailable
from websockets.sync.client import connect

from reconciliation import services
from reconciliation.models import AccountSyncState
from reconciliation.stream.connection import stream_url
from reconciliation.stream.events import DEFAULT_EVENTS, parse_events
from reconciliation.user_stream import AccountStream, StreamConfig, excerpt, handle_message
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import RateLimited
from trades.models import Account, Trade, TradeEvent

from .stream_helpers import Recorder, StreamThread, new_trade, place, place_trade, status_of, wait_for

REPO = Path(__file__).resolve().parents[2]
live = pytest.mark.django_db(transaction=True)  # the stream's threads must see the test's rows


@pytest.fixture
def stream_recorder():
    return Recorder()


@pytest.fixture
def start_stream(binance):
    threads = []

    def start(recorder, **config):
        thread = StreamThread(recorder, **config).start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.stop()


def fill(exchange, trade, **kwargs):
    return exchange.control.fill_order(
        trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id, **kwargs
    )


def events_of(trade, **filters):
    return list(TradeEvent.objects.filter(trade=trade, **filters).order_by("pk"))


def capture_order_events(exchange, account, action, count: int) -> list[str]:
    """Run action() with a bare WebSocket on the account's stream; return the first `count` ORDER_TRADE_UPDATE
    frames exactly as the sandbox sent them."""
    with BinanceFuturesClient.for_account(account) as client:
        key = client.create_listen_key()
    frames = []
    with connect(stream_url(exchange.ws_url, key, ["ORDER_TRADE_UPDATE"]), open_timeout=5) as ws:
        wait_for(lambda: exchange.control.listen_keys(account.api_key)["connections"] == 1)
        action()
        while len(frames) < count:
            raw = ws.recv(timeout=5)
            if json.loads(raw)["e"] == "ORDER_TRADE_UPDATE":
                frames.append(raw)
    return frames


# --- the live path ----------------------------------------------------------------------------------------------


@live
def test_fill_pushed_over_the_websocket_opens_the_trade(binance, account, start_stream):
    recorder = Recorder(reconcile=False)  # only the WebSocket can open the trades here
    stream = start_stream(recorder)
    stream.wait_connected(account.pk)
    # The connect's own position sync, first: the fills' ACCOUNT_UPDATEs must open a window of their own.
    wait_for(lambda: recorder.count("sync_positions", account.pk, "ws_connect") == 1)
    first, second = place_trade(account), place_trade(account, qty="0.020")

    fill(binance, first)
    fill(binance, second)

    wait_for(lambda: status_of(first) == status_of(second) == Trade.Status.OPEN, what="both trades open")
    first.refresh_from_db()
    assert (first.filled_qty, first.entry_price) == (Decimal("0.010"), Decimal("50000"))
    assert [(e.source, e.to_status) for e in events_of(first, from_status="pending", to_status="open")] == [
        ("ws", "open")
    ]
    # The fills' ACCOUNT_UPDATEs ask for a position sync (debounced: see the next test).
    wait_for(lambda: recorder.count("sync_positions", account.pk, "ws_account_update") >= 1)
    state = AccountSyncState.objects.get(account=account)
    assert state.stream_state == "connected" and state.stream_last_event_at is not None
    assert state.stream_heartbeat_at is not None


def bare_stream(executor, recorder, name, **config) -> AccountStream:
    """Account 7's stream without a socket: for driving its scheduling and retries directly."""
    return AccountStream(
        SimpleNamespace(pk=7, name=name),
        executor=executor,
        config=StreamConfig(**config),
        enqueue_reconcile=recorder.enqueue_reconcile,
        enqueue_position_sync=recorder.enqueue_position_sync,
    )


def test_account_updates_within_the_debounce_window_make_one_position_sync():
    recorder = Recorder(reconcile=False)

    async def scenario():
        with ThreadPoolExecutor(2) as executor:
            stream = bare_stream(executor, recorder, "debounce", position_debounce_sec=0.05)
            for _ in range(5):
                stream._schedule_position_sync("ws_account_update")
            await asyncio.gather(*stream._tasks)  # every scheduled send has happened
            first_window = recorder.count("sync_positions", 7, "ws_account_update")
            stream._schedule_position_sync("ws_connect")
            await asyncio.gather(*stream._tasks)
            return first_window, recorder.count("sync_positions", 7)

    assert asyncio.run(scenario()) == (1, 2)


class BrokerHiccup(Recorder):
    """The broker refuses the first `failures` enqueues of each kind, then takes them."""

    def __init__(self, failures: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failures = {"reconcile": failures, "sync_positions": failures}

    def _hiccup(self, kind: str) -> None:
        with self.lock:
            if self.failures[kind] > 0:
                self.failures[kind] -= 1
                raise BrokerUnavailable("Error 111 connecting to localhost:6379. Connection refused.")

    def enqueue_reconcile(self, account_id: int, reason: str) -> None:
        self._hiccup("reconcile")
        super().enqueue_reconcile(account_id, reason)

    def enqueue_position_sync(self, account_id: int, reason: str) -> None:
        self._hiccup("sync_positions")
        super().enqueue_position_sync(account_id, reason)


@live
def test_the_connect_reconcile_is_retried_when_the_broker_refuses_it(binance, account, start_stream, caplog):
    recorder = BrokerHiccup()
    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        stream = start_stream(recorder)
        stream.wait_connected(account.pk)  # i.e. the ws_connect reconcile went through after all
    assert recorder.failures["reconcile"] == 0
    assert stream.connects(account.pk) == 1  # retried on the same connection, not by reconnecting
    failed = [r for r in caplog.records if "enqueue_reconcile_failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelname == "ERROR" and "reason=ws_connect" in failed[0].getMessage()


def test_a_refused_position_sync_enqueue_is_retried():
    recorder = BrokerHiccup(reconcile=False)

    async def scenario():
        with ThreadPoolExecutor(2) as executor:
            stream = bare_stream(executor, recorder, "hiccup", position_debounce_sec=0.01, backoff_base_sec=0.01)
            stream._schedule_position_sync("ws_account_update")
            await asyncio.wait_for(asyncio.gather(*stream._tasks), 5)

    asyncio.run(scenario())
    assert recorder.failures["sync_positions"] == 0
    assert recorder.calls == [("sync_positions", 7, "ws_account_update")]


def test_a_refused_connect_reconcile_is_abandoned_once_a_newer_connection_sent_its_own(caplog):
    recorder = BrokerHiccup(failures=1000, reconcile=False)

    async def scenario():
        with ThreadPoolExecutor(2) as executor:
            stream = bare_stream(executor, recorder, "hiccup", backoff_base_sec=0.01, backoff_max_sec=0.01)
            stream.connects = 1
            retrying = asyncio.create_task(
                stream._enqueue(
                    "enqueue_reconcile",
                    recorder.enqueue_reconcile,
                    "ws_connect",
                    superseded=lambda: stream.connects != 1,
                )
            )

            async def a_few_attempts():
                while recorder.failures["reconcile"] > 997:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(a_few_attempts(), 5)
            stream.connects = 2
            await asyncio.wait_for(retrying, 5)

    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        asyncio.run(scenario())
    assert any("enqueue_reconcile_abandoned" in r.getMessage() for r in caplog.records)


@live
def test_f2_fill_while_the_stream_is_down_is_reconciled_on_reconnect(binance, account, start_stream, stream_recorder):
    stream = start_stream(stream_recorder)
    stream.wait_connected(account.pk)
    wait_for(lambda: stream_recorder.count("sync_positions", account.pk, "ws_connect") == 1)
    trade = place_trade(account)
    binance.control.pause_events(account.api_key)  # the fill's events are lost, as in an outage
    fill(binance, trade)
    binance.control.resume_events(account.api_key)
    assert status_of(trade) == Trade.Status.PENDING

    binance.control.drop_connections(account.api_key)

    stream.wait_connected(account.pk, connects=2)
    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, timeout=5, what="trade opened by the reconcile")
    assert [e.source for e in events_of(trade, to_status="open")] == ["reconcile"]
    assert stream.stream(account.pk).disconnects[0].startswith("connection_closed_")
    assert stream_recorder.count("reconcile", account.pk, "ws_connect") == 2
    # The position it opened (and any a stop-loss closed in the gap, its ACCOUNT_UPDATE lost) is synced too.
    wait_for(
        lambda: stream_recorder.count("sync_positions", account.pk, "ws_connect") == 2,
        what="the reconnect's position sync",
    )
    assert stream_recorder.count("sync_positions", account.pk, "ws_account_update") == 0


@live
@pytest.mark.parametrize("how", ["clock_past_60_min", "expired_now"])
def test_f3_expired_listen_key_means_new_key_reconnect_and_reconcile(
    binance, account, start_stream, stream_recorder, how
):
    stream = start_stream(stream_recorder)
    stream.wait_connected(account.pk)
    old_key = binance.control.listen_keys(account.api_key)["listen_key"]
    trade = place_trade(account)
    binance.control.pause_events(account.api_key)
    fill(binance, trade)
    binance.control.resume_events(account.api_key)

    if how == "clock_past_60_min":
        binance.control.advance_clock(60 * 60 * 1000 + 1)
    else:
        binance.control.expire_listen_key(account.api_key)

    stream.wait_connected(account.pk, connects=2)
    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, timeout=5, what="trade opened by the reconcile")
    keys = binance.control.listen_keys(account.api_key)
    assert keys["listen_key"] not in (None, old_key) and keys["connections"] == 1
    assert list(stream.stream(account.pk).disconnects) == ["listen_key_expired"]


@live
def test_keepalive_and_proactive_reconnect_before_the_connection_limit(binance, account, start_stream, stream_recorder):
    binance.control.reset_stats()
    stream = start_stream(stream_recorder, keepalive_sec=0.1, max_connection_sec=1.0)
    stream.wait_connected(account.pk, connects=2, timeout=5)  # the second connect is the proactive one
    assert stream.stream(account.pk).disconnects[0] == "max_connection_age"
    assert binance.control.stats()["requests"].get("PUT /fapi/v1/listenKey", 0) >= 1
    assert stream_recorder.count("reconcile", account.pk, "ws_connect") >= 2


@live
def test_a_hung_db_call_ends_the_connection_and_the_reconnect_reconciles(
    binance, account, start_stream, stream_recorder, monkeypatch, caplog
):
    """A DB call that never returns (a half-open socket after a failover) must not freeze the account's stream."""
    released = threading.Event()
    real_apply = services.apply_order_snapshot

    def hung(*args, **kwargs):
        released.wait(30)
        return real_apply(*args, **kwargs)

    stream_recorder.reconcile = False  # the reconcile would hang on the same call
    stream = start_stream(stream_recorder, db_call_timeout_sec=0.3)
    stream.wait_connected(account.pk)
    monkeypatch.setattr(services, "apply_order_snapshot", hung)
    try:
        with caplog.at_level(logging.ERROR, logger="reconciliation.user_stream"):
            place_trade(account)  # its NEW order update is applied through the hung call

            stream.wait_connected(account.pk, connects=2)
        assert stream.stream(account.pk).disconnects[0] == "db_timeout"
        assert stream.stream(account.pk).outcomes.get("db_timeout") == 1
        assert any("db_timeout" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
        wait_for(lambda: binance.control.listen_keys(account.api_key)["connections"] == 1, what="one live socket")
    finally:
        released.set()


@live
def test_a_failed_keepalive_is_retried_on_the_live_connection(binance, account, start_stream, stream_recorder):
    binance.control.inject_fault("/fapi/v1/listenKey", "503", count=1, method="PUT")
    stream = start_stream(stream_recorder, keepalive_sec=0.2)
    stream.wait_connected(account.pk)
    key = binance.control.listen_keys(account.api_key)

    wait_for(
        lambda: binance.control.stats()["requests"].get("PUT /fapi/v1/listenKey", 0) >= 2,
        what="the failed keepalive and its retry",
    )
    wait_for(
        lambda: binance.control.listen_keys(account.api_key)["expires_at"] > key["expires_at"],
        what="a keepalive that went through",
    )  # extended; the sandbox clock is real time

    assert binance.control.stats()["statuses"].get("503") == 1
    assert stream.connects(account.pk) == 1 and list(stream.stream(account.pk).disconnects) == []
    after = binance.control.listen_keys(account.api_key)
    assert (after["listen_key"], after["connections"]) == (key["listen_key"], 1)


@live
def test_keepalives_failing_until_the_key_is_about_to_lapse_end_the_connection(
    binance, account, start_stream, stream_recorder, caplog
):
    binance.control.inject_fault("/fapi/v1/listenKey", "503", count=1000, method="PUT")
    with caplog.at_level(logging.INFO, logger="reconciliation.user_stream"):
        stream = start_stream(
            stream_recorder, keepalive_sec=0.1, listen_key_validity_sec=1.0, listen_key_margin_sec=0.4
        )
        stream.wait_connected(account.pk, connects=2)
        binance.control.clear_faults()
    assert stream.stream(account.pk).disconnects[0] == "keepalive_failed"
    lines = [r.getMessage() for r in caplog.records]
    gave_up = next(i for i, line in enumerate(lines) if "keepalive_gave_up" in line)
    assert caplog.records[gave_up].levelname == "ERROR"
    assert sum("keepalive_failed account=" in line for line in lines[:gave_up]) >= 2  # retried on the socket first


def test_a_rate_limited_keepalive_waits_for_retry_after():
    calls = []

    class Client:
        def keepalive_listen_key(self, key):
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise RateLimited(-1003, "Too many requests", 429, retry_after=0.3)

    async def scenario():
        with ThreadPoolExecutor(2) as executor:
            stream = bare_stream(executor, Recorder(), "limited", keepalive_sec=0.01, backoff_base_sec=0.01)
            keepalive = asyncio.create_task(stream._keep_alive(Client(), "key", time.monotonic()))

            async def two_calls():
                while len(calls) < 2:
                    await asyncio.sleep(0.01)

            try:
                await asyncio.wait_for(two_calls(), 5)
            finally:
                keepalive.cancel()
            return stream._end_reason

    assert asyncio.run(scenario()) is None  # the connection was never ended
    assert calls[1] - calls[0] >= 0.3


@live
def test_two_accounts_on_one_symbol_only_see_and_apply_their_own_events(binance, make_account, start_stream):
    alice, bob = make_account(), make_account()
    stream = start_stream(Recorder(reconcile=False))
    stream.wait_connected(alice.pk)
    stream.wait_connected(bob.pk)
    # Same symbol and even the same client order id (DESIGN F16): only the account's own stream may touch it.
    alices = place_trade(alice, client_order_id="shared-id-1")
    bobs = place_trade(bob, client_order_id="shared-id-1")

    fill(binance, alices)
    wait_for(lambda: status_of(alices) == Trade.Status.OPEN)
    fill(binance, bobs, qty="0.004")
    wait_for(lambda: Trade.objects.get(pk=bobs.pk).filled_qty == Decimal("0.004"))

    alices.refresh_from_db()
    bobs.refresh_from_db()
    assert (alices.status, alices.filled_qty) == ("open", Decimal("0.010"))
    assert (bobs.status, bobs.filled_qty) == ("pending", Decimal("0.004"))
    assert alices.entry_order_id != bobs.entry_order_id
    for trade in (alices, bobs):
        assert {e.payload["order_id"] for e in events_of(trade, source="ws")} == {trade.entry_order_id}


@live
def test_accounts_added_disabled_and_rekeyed_are_picked_up_without_restart(
    binance, make_account, start_stream, stream_recorder
):
    first = make_account()
    stream = start_stream(stream_recorder)
    stream.wait_connected(first.pk)

    added = make_account()
    stream.wait_connected(added.pk)

    first.is_active = False
    first.save()
    wait_for(lambda: binance.control.listen_keys(first.api_key)["connections"] == 0, what="socket closed")
    wait_for(lambda: AccountSyncState.objects.get(account=first).stream_state == "stopped")
    assert binance.control.listen_keys(first.api_key)["listen_key"] is not None  # never DELETEd: it lapses

    old_api_key = added.api_key
    creds = binance.control.create_account()
    added.api_key, added.api_secret = creds["api_key"], creds["api_secret"]
    added.save()
    wait_for(lambda: binance.control.listen_keys(creds["api_key"])["connections"] == 1, what="re-keyed stream")
    assert binance.control.listen_keys(old_api_key)["connections"] == 0


@live
def test_an_account_whose_secret_cannot_be_decrypted_is_skipped_and_the_others_stream(
    binance, make_account, start_stream, caplog
):
    broken, healthy = make_account(), make_account()
    with connection.cursor() as cursor:  # e.g. encrypted under a FIELD_ENCRYPTION_KEY this process does not have
        cursor.execute(
            f"UPDATE {Account._meta.db_table} SET api_secret = %s WHERE id = %s",
            ["gAAAAABnot-a-token-for-our-key", broken.pk],
        )

    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        stream = start_stream(Recorder(reconcile=False))
        stream.wait_connected(healthy.pk)
        wait_for(lambda: [r for r in caplog.records if "account_unreadable" in r.getMessage()], what="the error")

    assert stream.stream(broken.pk) is None
    assert binance.control.listen_keys(broken.api_key)["listen_key"] is None
    unreadable = [r for r in caplog.records if "account_unreadable" in r.getMessage()]
    assert {r.levelname for r in unreadable} == {"ERROR"}
    assert all(f"account={broken.pk}/{broken.name}" in r.getMessage() for r in unreadable)
    assert not any(broken.api_secret in r.getMessage() or healthy.api_secret in r.getMessage() for r in caplog.records)


class Reconnecting(AccountStream):
    """An AccountStream whose connections end as soon as they start, `limit` times, then it stops (no sockets)."""

    def __init__(self, *args, limit: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit = limit
        self.attempts = 0

    async def _connect_and_read(self, client, previous_reason, disconnected_at) -> str:
        self.attempts += 1
        if self.attempts > self.limit:
            self.stop()
            return "stop"
        return f"dropped_{self.attempts}"


def run_reconnecting(account, limit: int) -> Reconnecting:
    recorder = Recorder(reconcile=False)

    async def scenario():
        with ThreadPoolExecutor(2) as executor:
            stream = Reconnecting(
                account,
                limit=limit,
                executor=executor,
                config=StreamConfig(backoff_base_sec=0, backoff_max_sec=0),
                enqueue_reconcile=recorder.enqueue_reconcile,
                enqueue_position_sync=recorder.enqueue_position_sync,
            )
            await asyncio.wait_for(stream.run(), 30)
            return stream

    return asyncio.run(scenario())


@live
def test_the_disconnect_history_is_bounded(binance, account):
    stream = run_reconnecting(account, limit=250)
    assert stream.attempts == 251
    assert list(stream.disconnects) == [f"dropped_{n}" for n in range(151, 251)]  # the latest 100


@live
def test_every_gateway_the_stream_builds_is_closed(binance, account, monkeypatch):
    built, closed = [], []
    real_init, real_close = BinanceFuturesClient.__init__, BinanceFuturesClient.close

    def init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(BinanceFuturesClient, "__init__", init)
    monkeypatch.setattr(BinanceFuturesClient, "close", close)
    run_reconnecting(account, limit=1)
    assert len(built) == 2  # for_account's defaults, and the listenKey client
    assert {id(c) for c in closed} == {id(c) for c in built}


# --- the message path without a socket ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_f6_duplicate_and_out_of_order_events_make_one_transition_and_never_regress(binance, account):
    trade = new_trade(account)

    def partial_fills_then_full():
        place(trade)
        fill(binance, trade, qty="0.004")
        fill(binance, trade, qty="0.002")
        fill(binance, trade)

    new, part1, part2, filled = capture_order_events(binance, account, partial_fills_then_full, 4)
    assert [json.loads(f)["o"]["X"] for f in (part1, part2, filled)] == ["PARTIALLY_FILLED"] * 2 + ["FILLED"]

    recorder = Recorder(reconcile=False)

    def handle(raw):
        return handle_message(account.pk, raw, enqueue_reconcile=recorder.enqueue_reconcile)

    handle(new)
    handle(part2)
    handle(part1)  # older than the one applied
    handle(part2)  # duplicate
    assert Trade.objects.get(pk=trade.pk).filled_qty == Decimal("0.006")
    assert str(handle(filled)) == "applied:opened"
    for raw in (filled, part1, new, filled):
        assert str(handle(raw)) != "applied:opened"

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty) == ("open", Decimal("0.010"))
    assert [(e.from_status, e.to_status) for e in events_of(trade, source="ws")] == [
        ("pending", "pending"),
        ("pending", "open"),
    ]  # the 0.006 progress, then the fill: once each
    assert recorder.calls == []


@pytest.mark.django_db
def test_a_db_error_is_retried_then_a_reconcile_is_enqueued_instead_of_dropping_the_fill(monkeypatch, caplog):
    from tests.factories import TradeFactory

    trade = TradeFactory()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise OperationalError(2013, "Lost connection to MySQL server during query")

    monkeypatch.setattr(services, "apply_order_snapshot", broken)
    recorder = Recorder(reconcile=False)
    event = {
        "e": "ORDER_TRADE_UPDATE",
        "E": 1,
        "o": {
            "s": trade.symbol,
            "c": trade.client_order_id,
            "X": "FILLED",
            "i": 42,
            "z": "0.010",
            "ap": "67000",
            "T": 1,
        },
    }
    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        outcome = handle_message(
            trade.account_id, json.dumps(event), enqueue_reconcile=recorder.enqueue_reconcile, retry_delay=0
        )
    assert outcome.kind == "db_failed" and len(calls) == 3
    assert recorder.calls == [("reconcile", trade.account_id, "ws_db_error")]
    assert [r.levelname for r in caplog.records].count("ERROR") == 1


# --- F13: malformed and foreign payloads, through the live stream --------------------------------------------------

SECRET_LOOKING = "Zq" * 32  # shaped like a listenKey / API key


def malformed_frames():
    pad = "x" * 5000
    return [
        "not json at all",
        "[1, 2, 3]",
        '{"e": 5}',
        '{"E": 1}',
        '{"e": "ORDER_TRADE_UPDATE", "E": 1}',
        '{"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTCUSDT", "X": "SOMETHING", "i": 1, "c": "x"}}',
        '{"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTCUSDT", "X": "FILLED", "i": "NaN", "z": 1e400}}',
        '{"e": "ACCOUNT_UPDATE", "a": "nope"}',
        f'{{"e": "SOMETHING_NEW", "E": 1, "listenKey": "{SECRET_LOOKING}", "pad": "{pad}"}}',
        "[" * 100_000,
    ]


@live
def test_f13_malformed_payloads_are_warned_and_skipped_and_good_ones_still_applied(
    binance, account, start_stream, caplog, settings
):
    # Binance delivers only the subscribed event types: one we subscribe to but do not know (a new one an operator
    # added to USER_STREAM_EVENTS) must still be warned and skipped.
    settings.USER_STREAM_EVENTS = "SOMETHING_NEW"
    trades = [place_trade(account) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        stream = start_stream(Recorder(reconcile=False))  # only the WebSocket can open the trades here
        stream.wait_connected(account.pk)
        bad = malformed_frames()
        for trade, frames in zip(trades, (bad[:4], bad[4:8], bad[8:]), strict=True):
            for raw in frames:
                binance.control.push_raw(account.api_key, raw)
            fill(binance, trade)  # its real events are queued on the same socket behind the bad frames
        wait_for(lambda: all(status_of(t) == Trade.Status.OPEN for t in trades), what="good frames applied")
    assert stream.connects(account.pk) == 1  # never dropped the connection over a bad frame
    skipped = [r.getMessage() for r in caplog.records if "user_stream skipped" in r.getMessage()]
    assert len(skipped) == len(bad)
    assert all(f"account={account.pk}" in line for line in skipped)
    assert not any(SECRET_LOOKING in line for line in skipped)
    assert all(len(line.split("excerpt=", 1)[1]) <= 200 for line in skipped)
    for trade in trades:
        assert [e.source for e in events_of(trade, to_status="open")] == ["ws"]


def test_binary_and_undecodable_frames_are_malformed_not_errors(caplog):
    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        outcomes = [handle_message(1, raw) for raw in (b"\xff\xfe\x00 not utf-8", b"", "", None, 12)]
    assert [o.kind for o in outcomes] == ["malformed"] * 5
    assert len(caplog.records) == 5


def test_excerpt_is_short_printable_and_masks_keys():
    text = excerpt(b'{"listenKey": "' + SECRET_LOOKING.encode() + b'"}\n\xff' + b"y" * 500)
    assert SECRET_LOOKING not in text and "<masked>" in text and len(text) <= 200 and "\n" not in text


# --- the process: manage.py run_user_stream, SIGTERM ------------------------------------------------------------


@pytest.mark.slow  # a manage.py process: migrate, stream, SIGTERM (~5 s)
def test_run_user_stream_command_streams_the_named_accounts_and_sigterm_closes_keys_and_exits_0(exchange, tmp_path):
    """Its own SQLite file DB (the test database is invisible to another process): migrate, create two accounts,
    stream one of them, SIGTERM."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tradeops.settings_test",
        "TRADEOPS_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'stream.sqlite3'}",
        "CELERY_BROKER_URL": "memory://",
        "BINANCE_FUTURES_REST_URL": exchange.rest_url,
        "BINANCE_FUTURES_WS_URL": exchange.ws_url,
    }
    manage = [sys.executable, str(REPO / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=60)
    streamed, other = exchange.control.create_account(), exchange.control.create_account()
    create = (
        "from trades.models import Account\n"
        f"Account.objects.create(name='streamed', api_key='{streamed['api_key']}', "
        f"api_secret='{streamed['api_secret']}')\n"
        f"Account.objects.create(name='other', api_key='{other['api_key']}', api_secret='{other['api_secret']}')"
    )
    subprocess.run([*manage, "shell", "-c", create], env=env, check=True, timeout=60)

    proc = subprocess.Popen(
        [*manage, "run_user_stream", "--account", "streamed"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: exchange.control.listen_keys(streamed["api_key"])["connections"] == 1,
            timeout=15,
            what="the subprocess connected",
        )
        live = exchange.control.listen_keys(streamed["api_key"])
        assert live["listen_key"] is not None
        assert live["subscriptions"] == [sorted(DEFAULT_EVENTS)]  # &events= named every default type
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    keys = exchange.control.listen_keys(streamed["api_key"])
    # Socket closed, key left to lapse: a DELETE would have closed the bot's own stream on the same key.
    assert (keys["listen_key"], keys["connections"]) == (live["listen_key"], 0), output
    assert "DELETE /fapi/v1/listenKey" not in exchange.control.stats()["requests"]
    assert exchange.control.listen_keys(other["api_key"])["listen_key"] is None  # not named: never streamed
    assert "event=connected" in output and "event=stopped" in output
    with sqlite3.connect(tmp_path / "stream.sqlite3") as db:
        assert db.execute("SELECT stream_state FROM reconciliation_accountsyncstate").fetchall() == [("stopped",)]


def test_config_reads_settings_and_backoff_is_capped_with_jitter(settings):
    settings.USER_STREAM_KEEPALIVE_SEC = 60
    settings.USER_STREAM_BACKOFF_MAX_SEC = 8
    config = StreamConfig.from_settings(backoff_base_sec=1)
    assert config.keepalive_sec == 60
    assert config.backoff_delay(0) == 0
    assert 0.5 <= config.backoff_delay(1) <= 1
    assert all(4 <= config.backoff_delay(20) <= 8 for _ in range(50))


def test_user_stream_events_setting_is_parsed_and_keeps_what_the_stream_needs(settings):
    settings.USER_STREAM_EVENTS = "TRADE_LITE, MARGIN_CALL/ORDER_TRADE_UPDATE"
    assert StreamConfig.from_settings().events == (
        "ORDER_TRADE_UPDATE",
        "ACCOUNT_UPDATE",
        "listenKeyExpired",
        "TRADE_LITE",
        "MARGIN_CALL",
    )
    assert parse_events("") == ("ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE", "listenKeyExpired")
    assert parse_events(["ALGO_UPDATE"])[-1] == "ALGO_UPDATE"
    assert stream_url("wss://fstream.binance.com", "K", ("ORDER_TRADE_UPDATE", "listenKeyExpired")) == (
        "wss://fstream.binance.com/private/ws?listenKey=K&events=ORDER_TRADE_UPDATE/listenKeyExpired"
    )


@live
def test_the_stream_connects_from_the_accounts_egress_address(binance, account, start_stream, settings):
    settings.BINANCE_SOURCE_ADDRESSES = "127.0.0.2"
    stream = start_stream(Recorder(reconcile=False))
    stream.wait_connected(account.pk)
    assert binance.control.listen_keys(account.api_key)["peers"] == ["127.0.0.2"]  # the WebSocket
    assert set(binance.control.stats()["used_weight_1m"]) == {"127.0.0.2"}  # and the listenKey POST
