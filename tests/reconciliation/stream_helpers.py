"""Helpers for the user-stream tests: the consumer in a background thread with its own event loop, in-process
stand-ins for the Celery enqueues, waiting with a deadline, and placing a trade's order on the sandbox."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal

from django.db import OperationalError, close_old_connections

from reconciliation import services
from reconciliation.user_stream import StreamConfig, UserStreamRunner
from tests.factories import TradeFactory
from trades.binance_client import BinanceFuturesClient
from trades.models import Account, Trade

FAST = dict(
    account_refresh_sec=0.2,
    backoff_base_sec=0.05,
    backoff_max_sec=0.5,
    position_debounce_sec=0.3,
    last_event_write_sec=0.0,
    open_timeout_sec=5.0,
    shutdown_sec=3.0,
)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until predicate() is truthy; a locked SQLite table (another thread writing) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OperationalError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


class Recorder:
    """Stands in for the Celery enqueues. reconcile=True runs the reconcile service right away, as the worker would."""

    def __init__(self, *, reconcile: bool = True) -> None:
        self.reconcile = reconcile
        self.calls: list[tuple[str, int, str]] = []
        self.lock = threading.Lock()

    def enqueue_reconcile(self, account_id: int, reason: str) -> None:
        if self.reconcile:
            close_old_connections()
            services.reconcile_pending(Account.objects.get(pk=account_id), reason=reason)
        with self.lock:
            self.calls.append(("reconcile", account_id, reason))

    def enqueue_position_sync(self, account_id: int, reason: str) -> None:
        with self.lock:
            self.calls.append(("sync_positions", account_id, reason))

    def count(self, kind: str, account_id: int | None = None, reason: str | None = None) -> int:
        with self.lock:
            return sum(1 for k, a, r in self.calls if k == kind and account_id in (None, a) and reason in (None, r))


class StreamThread:
    """A UserStreamRunner on its own loop in a daemon thread."""

    def __init__(self, recorder: Recorder, **config) -> None:
        self.recorder = recorder
        self.runner = UserStreamRunner(
            config=StreamConfig.from_settings(**{**FAST, **config}),
            enqueue_reconcile=recorder.enqueue_reconcile,
            enqueue_position_sync=recorder.enqueue_position_sync,
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="stream-test", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.runner.run())
        except BaseException as exc:  # noqa: BLE001 — surfaced by stop()
            self.error = exc

    def start(self) -> StreamThread:
        self.thread.start()
        return self

    def stream(self, account_id: int):
        return self.runner.streams.get(account_id)

    def connects(self, account_id: int) -> int:
        stream = self.stream(account_id)
        return stream.connects if stream else 0

    def wait_connected(self, account_id: int, connects: int = 1, timeout: float = 10.0) -> None:
        """Until the account's `connects`-th subscribe is live and its ws_connect reconcile has run."""
        wait_for(
            lambda: (
                self.connects(account_id) >= connects
                and self.recorder.count("reconcile", account_id, "ws_connect") >= connects
            ),
            timeout,
            what=f"account {account_id} connect #{connects}",
        )

    def stop(self, timeout: float = 10.0) -> None:
        self.runner.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not stop"
        if self.error is not None:
            raise self.error


def new_trade(
    account: Account, *, symbol: str = "BTCUSDT", qty: str = "0.010", price: str = "50000", **fields
) -> Trade:
    """A pending trade whose order is not placed yet."""
    return TradeFactory(account=account, symbol=symbol, quantity=Decimal(qty), price=Decimal(price), **fields)


def place(trade: Trade) -> dict:
    """Place the trade's limit order on the sandbox (the bot's placement, without recording the answer)."""
    with BinanceFuturesClient.for_account(trade.account) as client:
        return client.place_order(
            trade.symbol, trade.side, trade.quantity, price=trade.price, client_order_id=trade.client_order_id
        )


def place_trade(account: Account, **kwargs) -> Trade:
    """A pending trade with its NEW limit order on the sandbox."""
    trade = new_trade(account, **kwargs)
    place(trade)
    return trade


def status_of(trade: Trade) -> str:
    return Trade.objects.values_list("status", flat=True).get(pk=trade.pk)
