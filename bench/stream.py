"""User-data stream latencies against the sandbox, with a baseline measured in the same run.

    .venv/bin/python bench/stream.py [--fills 1000] [--gaps 20] [--database-url mysql://…]

1. fill → DB over the WebSocket: the sandbox fills an order (control API), the consumer (UserStreamRunner, in a
   thread, as `manage.py run_user_stream` runs it) receives ORDER_TRADE_UPDATE and opens the trade. Measured from
   just before the fill call to the TradeEvent's created_at. Baseline: the same fill → the frame arriving at a
   bare `websockets` client (transport only, no DB). Two loads: one fill at a time, and all fills fired back to back.
2. fill in a reconnect gap → reconciled: events paused, order filled, connection dropped (or the listenKey
   expired); measured from the drop to the reconnect and to the trade opened by the ws_connect reconcile (run
   in-process, as a worker would). Reference: without reconcile-on-connect the fill waits for the periodic
   reconcile (every 60 s: 30 s on average).

Django is configured here (temp SQLite file unless --database-url), the sandbox runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.testing import running_sandbox


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def row(name, values_ms, extra=""):
    if not values_ms:
        return f"{name:<46} {'-':>8}"
    return (
        f"{name:<46} {statistics.median(values_ms):8.2f} {pct(values_ms, 99):8.2f} {max(values_ms):8.2f} "
        f"{len(values_ms):6d}  {extra}"
    )


def wait_for(predicate, timeout=30.0, interval=0.0005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval)


def setup_django(tmp: str, database_url: str | None, sandbox) -> None:
    from cryptography.fernet import Fernet

    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "tradeops.settings",
            "DJANGO_SECRET_KEY": uuid.uuid4().hex,
            "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "TRADEOPS_VAR_DIR": tmp,
            "DATABASE_URL": database_url or f"sqlite:///{tmp}/bench.sqlite3",
            "CELERY_BROKER_URL": "memory://",
            "BINANCE_FUTURES_REST_URL": sandbox.rest_url,
            "BINANCE_FUTURES_WS_URL": sandbox.ws_url,
            "LOG_LEVEL": "ERROR",  # the drops below are deliberate; their WARNING lines are noise here
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def new_account(sandbox, name):
    from trades.models import Account

    creds = sandbox.control.create_account(balance="100000000")
    return Account.objects.create(
        name=f"{name}-{uuid.uuid4().hex[:6]}", api_key=creds["api_key"], api_secret=creds["api_secret"]
    )


def place_paced(client, client_order_id, qty="0.001", price="50000"):
    """A resting BTCUSDT order (set-up, not measured). Binance allows an account 300 new orders per 10 s (-1015
    past it): the set-up waits out the window it is told, as a bot must."""
    from trades.exceptions import RateLimited

    while True:
        try:
            return client.place_order("BTCUSDT", "BUY", qty, price=price, client_order_id=client_order_id)
        except RateLimited as exc:
            if exc.code != -1015:
                raise
            time.sleep(exc.retry_after)


def place_pending(account, client, qty="0.001", price="50000"):
    from trades.models import Trade

    trade = Trade.objects.create(
        account=account,
        symbol="BTCUSDT",
        side="BUY",
        quantity=Decimal(qty),
        price=Decimal(price),
        client_order_id=f"b-{uuid.uuid4().hex[:30]}",
    )
    place_paced(client, trade.client_order_id, qty, price)
    return trade


def open_latencies_ms(trades, started):
    from trades.models import TradeEvent

    opened = dict(TradeEvent.objects.filter(trade__in=trades, to_status="open").values_list("trade_id", "created_at"))
    return [(opened[t.pk].timestamp() - started[t.pk]) * 1000 for t in trades if t.pk in opened]


# --- 1. fill → DB -------------------------------------------------------------------------------------------------


def bench_baseline(sandbox, n):
    from websockets.sync.client import connect

    from trades.binance_client import BinanceFuturesClient

    account = new_account(sandbox, "baseline")
    client = BinanceFuturesClient.for_account(account)
    key = client.create_listen_key()
    latencies = []
    with connect(f"{sandbox.ws_url}/private/ws?listenKey={key}&events=ORDER_TRADE_UPDATE") as ws:
        for _ in range(n):
            cid = f"b-{uuid.uuid4().hex[:30]}"
            place_paced(client, cid)
            started = time.perf_counter()
            sandbox.control.fill_order(account.api_key, "BTCUSDT", client_order_id=cid)
            while True:
                event = json.loads(ws.recv(timeout=10))
                if event["e"] == "ORDER_TRADE_UPDATE" and event["o"]["c"] == cid and event["o"]["X"] == "FILLED":
                    break
            latencies.append((time.perf_counter() - started) * 1000)
    client.close()  # the listenKey lapses by itself: tradeops never DELETEs one
    return latencies


def bench_sequential(sandbox, account, client, n):
    from trades.models import Trade

    trades, started = [], {}
    for _ in range(n):
        trade = place_pending(account, client)
        started[trade.pk] = time.time()
        sandbox.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        wait_for(lambda trade=trade: Trade.objects.filter(pk=trade.pk, status="open").exists())
        trades.append(trade)
    return open_latencies_ms(trades, started)


def bench_burst(sandbox, account, client, n):
    from trades.models import Trade

    trades = [place_pending(account, client) for _ in range(n)]
    started = {}
    t0 = time.monotonic()
    for trade in trades:
        started[trade.pk] = time.time()
        sandbox.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    wait_for(
        lambda: not Trade.objects.filter(pk__in=[t.pk for t in trades], status="pending").exists(),
        timeout=120,
        interval=0.005,
    )
    elapsed = time.monotonic() - t0
    return open_latencies_ms(trades, started), n / elapsed


# --- 2. fill in a gap → reconciled ------------------------------------------------------------------------------


def bench_gaps(sandbox, account, client, runner_thread, rounds, how):
    from trades.models import Trade

    stream = runner_thread.runner.streams[account.pk]
    to_connect, to_open = [], []
    for _ in range(rounds):
        # Let the connection count as stable, so each round starts from a fresh backoff as in production.
        wait_for(
            lambda: (
                stream.connects
                and time.monotonic() - runner_thread.connected_at.get(account.pk, 0)
                >= runner_thread.runner.config.stable_after_sec
            ),
            interval=0.01,
        )
        trade = place_pending(account, client)
        sandbox.control.pause_events(account.api_key)
        sandbox.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        sandbox.control.resume_events(account.api_key)
        before = stream.connects
        started_wall, started = time.time(), time.monotonic()
        if how == "drop":
            sandbox.control.drop_connections(account.api_key)
        else:
            sandbox.control.expire_listen_key(account.api_key)
        wait_for(lambda before=before: stream.connects > before)
        to_connect.append((time.monotonic() - started) * 1000)
        runner_thread.connected_at[account.pk] = time.monotonic()
        wait_for(lambda trade=trade: Trade.objects.filter(pk=trade.pk, status="open").exists())
        to_open.extend(open_latencies_ms([trade], {trade.pk: started_wall}))
    return to_connect, to_open


class RunnerThread:
    def __init__(self, config):
        from reconciliation import services
        from reconciliation.user_stream import UserStreamRunner
        from trades.models import Account

        def reconcile(account_id, reason):
            services.reconcile_pending(Account.objects.get(pk=account_id), reason=reason)

        self.connected_at: dict[int, float] = {}
        self.runner = UserStreamRunner(
            config=config, enqueue_reconcile=reconcile, enqueue_position_sync=lambda account_id, reason: None
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.runner.run()), daemon=True)

    def start(self, account_ids):
        self.thread.start()
        for pk in account_ids:
            wait_for(lambda pk=pk: (s := self.runner.streams.get(pk)) is not None and s.connects >= 1, timeout=15)
            self.connected_at[pk] = time.monotonic()
        return self

    def stop(self):
        self.runner.request_stop()
        self.thread.join(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fills", type=int, default=1000)
    parser.add_argument("--gaps", type=int, default=20)
    parser.add_argument("--database-url", default=None, help="default: a temp SQLite file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, running_sandbox() as sandbox:
        setup_django(tmp, args.database_url, sandbox)
        from django.db import connection

        from reconciliation.user_stream import StreamConfig
        from trades.binance_client import BinanceFuturesClient

        config = StreamConfig.from_settings(stable_after_sec=0.5)
        fills_account, gaps_account = new_account(sandbox, "fills"), new_account(sandbox, "gaps")
        baseline = bench_baseline(sandbox, args.fills)
        runner = RunnerThread(config).start([fills_account.pk, gaps_account.pk])
        try:
            with BinanceFuturesClient.for_account(fills_account) as client:
                sequential = bench_sequential(sandbox, fills_account, client, args.fills)
                burst, burst_rate = bench_burst(sandbox, fills_account, client, args.fills)
            with BinanceFuturesClient.for_account(gaps_account) as client:
                drop_connect, drop_open = bench_gaps(sandbox, gaps_account, client, runner, args.gaps, "drop")
                exp_connect, exp_open = bench_gaps(sandbox, gaps_account, client, runner, args.gaps, "expire")
        finally:
            runner.stop()

        print(
            f"\nuser stream latencies — {connection.vendor}, sandbox on 127.0.0.1, {os.cpu_count()} CPUs, "
            f"backoff base {config.backoff_base_sec}s (first retry × 0.5–1 jitter)"
        )
        print(f"{'':<46} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>6}")
        print(row("baseline: fill → frame at a bare WS client", baseline))
        print(row("fill → trade open in DB, one at a time", sequential))
        print(row("fill → trade open in DB, burst", burst, f"{burst_rate:.0f} fills/s"))
        print(row("drop → reconnected (backoff + new socket)", drop_connect))
        print(row("drop → gap fill reconciled in DB", drop_open))
        print(row("listenKey expired → reconnected", exp_connect))
        print(row("listenKey expired → gap fill reconciled in DB", exp_open))
        print(
            f"{'reference: periodic reconcile only (every 60 s)':<46} {30000:8.0f} {59400:8.0f} {60000:8.0f}"
            f"       (uniform 0–60 s, computed)"
        )


if __name__ == "__main__":
    main()
