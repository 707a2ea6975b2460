"""A fleet: reconcile_all_accounts through real Celery + Redis with 2 worker processes, against the naive seed
approach (one GET /fapi/v1/order per pending trade, 2 processes), same run, same data.

    DATABASE_URL=mysql://… CELERY_BROKER_URL=redis://… .venv/bin/python bench/fleet.py [--accounts 1000]
        [--trades 50] [--symbols 5]

Each side gets its own `accounts` accounts with `trades` pending trades each (NEW orders resting in the sandbox,
spread over `symbols` symbols, their placement answers already applied: the periodic reconcile's everyday case). Prints trades reconciled per second, Binance weight per account and the p95 time per
account, and the ratios.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _django import ROOT, setup_django  # noqa: E402

if not os.environ.get("CELERY_BROKER_URL", "").startswith("redis"):
    sys.exit("bench/fleet.py needs CELERY_BROKER_URL=redis://… (and, for a fair figure, DATABASE_URL=mysql://…)")
CHILD_ENV = setup_django()

from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402

from reconciliation.models import ReconcileRun  # noqa: E402
from sandbox.testing import running_sandbox  # noqa: E402
from tradeops.celery import app  # noqa: E402
from trades.models import Account, Trade  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]


def make_fleet(control, prefix: str, accounts: int, trades: int, symbols: list[str]) -> list[int]:
    ids = []
    per_symbol = trades // len(symbols)
    for a in range(accounts):
        creds = control.create_account()
        account = Account.objects.create(name=f"{prefix}{a}", api_key=creds["api_key"], api_secret=creds["api_secret"])
        rows = []
        for symbol in symbols:
            bulk = control.bulk_orders(creds["api_key"], symbol, per_symbol, price="1", quantity="10",
                                       client_order_id_prefix=f"{prefix}{a}-{symbol}-")
            # As after the bot's placement: the answer (NEW, orderId, updateTime) is already applied to the row.
            placed_at = control.get_order(creds["api_key"], symbol, order_id=bulk["first_order_id"])["updateTime"]
            rows += [Trade(account=account, symbol=symbol, side="BUY", quantity=Decimal("10"), price=Decimal("1"),
                           client_order_id=f"{prefix}{a}-{symbol}-{order_id}", entry_order_id=order_id,
                           exchange_status="NEW", exchange_update_time=placed_at)
                     for order_id in range(bulk["first_order_id"], bulk["last_order_id"] + 1)]
        Trade.objects.bulk_create(rows)
        ids.append(account.pk)
    return ids


def _seed_worker(args):
    """One process of the naive approach: for each account, one order query per pending trade."""
    account_ids, rest_url = args
    import django
    from django.conf import settings

    django.setup()
    settings.BINANCE_FUTURES_REST_URL = rest_url
    from reconciliation.services import apply_order_snapshot, fetch_order
    from trades.binance_client import BinanceFuturesClient

    durations = []
    for account_id in account_ids:
        started = time.perf_counter()
        account = Account.objects.get(pk=account_id)
        with BinanceFuturesClient.for_account(account) as client:
            for trade in Trade.objects.get_pending_recent(account_id, limit=10**6):
                apply_order_snapshot(trade, fetch_order(client, trade), "reconcile")
        durations.append(time.perf_counter() - started)
    return durations


def p95(values):
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--trades", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=5)
    args = parser.parse_args()
    symbols = SYMBOLS[: args.symbols]
    n_trades = args.accounts * (args.trades // len(symbols)) * len(symbols)

    with running_sandbox(weight_limit=10**9) as sandbox, override_settings(BINANCE_FUTURES_REST_URL=sandbox.rest_url):
        control = sandbox.control
        t0 = time.perf_counter()
        run = f"{int(time.time()) % 100000}-"  # account names stay unique when DATABASE_URL is reused
        ours_ids = make_fleet(control, f"ours{run}", args.accounts, args.trades, symbols)
        seed_ids = make_fleet(control, f"seed{run}", args.accounts, args.trades, symbols)
        print(f"setup: {2 * args.accounts} accounts, {2 * n_trades} pending trades in {time.perf_counter() - t0:.0f}s")

        # Ours: beat's reconcile_all_accounts, fanned out to 2 worker processes over Redis.
        app.control.purge()
        env = {**os.environ, **CHILD_ENV, "BINANCE_FUTURES_REST_URL": sandbox.rest_url, "PYTHONUNBUFFERED": "1"}
        workers = [subprocess.Popen([sys.executable, "-m", "celery", "-A", "tradeops", "worker", "--pool=prefork",
                                     "--concurrency=1", f"--hostname=bench{i}@%h", "--without-mingle",
                                     "--without-gossip", "--loglevel=WARNING"], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (1, 2)]
        try:
            time.sleep(0)  # (workers start while we deactivate the seed side's accounts)
            Account.objects.filter(pk__in=seed_ids).update(is_active=False)
            deadline = time.monotonic() + 60
            while len(app.control.ping(timeout=0.5) or []) < 2 and time.monotonic() < deadline:
                pass
            control.reset_stats()
            started = time.perf_counter()
            app.send_task("reconciliation.tasks.reconcile_all_accounts")
            while ReconcileRun.objects.filter(account_id__in=ours_ids).count() < len(ours_ids):
                time.sleep(0.2)
            ours_wall = time.perf_counter() - started
            ours_weight = control.stats()["total_weight"]
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(30)
        runs = list(ReconcileRun.objects.filter(account_id__in=ours_ids))
        ours_p95 = p95([r.duration_ms / 1000 for r in runs])
        assert all(r.report["checked"] == args.trades // len(symbols) * len(symbols) for r in runs)

        # The seed's approach, same data shape, same parallelism (2 processes).
        Account.objects.filter(pk__in=seed_ids).update(is_active=True)
        connection.close()
        control.reset_stats()
        started = time.perf_counter()
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            halves = pool.map(_seed_worker, [(seed_ids[0::2], sandbox.rest_url), (seed_ids[1::2], sandbox.rest_url)])
        seed_wall = time.perf_counter() - started
        seed_weight = control.stats()["total_weight"]
        seed_p95 = p95([d for half in halves for d in half])

    rows = [("seed (1 GET per trade)", seed_wall, seed_weight, seed_p95), ("ours (reconcile_all_accounts)", ours_wall,
                                                                          ours_weight, ours_p95)]
    print(f"\nfleet: {args.accounts} accounts × {args.trades} pending trades over {len(symbols)} symbols, "
          f"2 worker processes, DB {connection.vendor}, broker Redis, sandbox over HTTP\n")
    print("| approach | wall s | trades/s | weight per account | p95 s per account |")
    print("|---|---|---|---|---|")
    for name, wall, weight, p in rows:
        print(f"| {name} | {wall:.1f} | {n_trades / wall:,.0f} | {weight / args.accounts:.1f} | {p:.3f} |")
    print(f"| ours/seed | {ours_wall / seed_wall:.3f} | {seed_wall / ours_wall:.2f}× | "
          f"{ours_weight / seed_weight:.3f} | {ours_p95 / seed_p95:.3f} |")


if __name__ == "__main__":
    main()
