"""A fleet on ONE egress IP, against Binance's real limits: reconcile_all_accounts through real Celery + Redis with 2
worker processes drawing from the fleet-wide weight budget, against the naive seed approach (one GET /fapi/v1/order
per pending trade, 2 processes, no shared budget), same run, same data, each for the same wall time.

    DATABASE_URL=mysql://… CELERY_BROKER_URL=redis://… .venv/bin/python bench/fleet.py [--accounts 1000]
        [--trades 50] [--symbols 5] [--minutes 2]

The sandbox limits request weight per source IP as Binance does (2,400/min, 429 with Retry-After, 418 bans from
2 minutes up); each side sends from its own loopback address (seed 127.0.0.2, ours 127.0.0.3), so one side's ban
cannot touch the other. Each side gets `accounts` accounts with `trades` pending trades each (NEW orders resting in
the sandbox over `symbols` symbols, placement answers applied: the periodic reconcile's everyday case). Prints, per
side: trades verified per minute, Binance weight per minute on its IP (the peak of the sandbox's own per-IP counter,
sampled), 429 and 418 answers, and the ratios. A side that collects a 429 or 418 is not a result Binance would allow.
"""

import argparse
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _django import ROOT, setup_django

if not os.environ.get("CELERY_BROKER_URL", "").startswith("redis"):
    sys.exit("bench/fleet.py needs CELERY_BROKER_URL=redis://… (and, for a fair figure, DATABASE_URL=mysql://…)")
CHILD_ENV = setup_django()

from django.db import connection
from django.test import override_settings

from reconciliation.models import ReconcileRun
from sandbox.testing import running_sandbox
from tradeops.celery import app
from trades import egress
from trades.models import Account, Trade

SEED_IP, OURS_IP = "127.0.0.2", "127.0.0.3"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]


def make_fleet(control, prefix: str, accounts: int, trades: int, symbols: list[str]) -> list[int]:
    ids = []
    per_symbol = trades // len(symbols)
    for a in range(accounts):
        creds = control.create_account()
        account = Account.objects.create(name=f"{prefix}{a}", api_key=creds["api_key"], api_secret=creds["api_secret"])
        rows = []
        for symbol in symbols:
            bulk = control.bulk_orders(
                creds["api_key"],
                symbol,
                per_symbol,
                price="1",
                quantity="10",
                client_order_id_prefix=f"{prefix}{a}-{symbol}-",
            )
            # As after the bot's placement: the answer (NEW, orderId, updateTime) is already applied to the row.
            placed_at = control.get_order(creds["api_key"], symbol, order_id=bulk["first_order_id"])["updateTime"]
            rows += [
                Trade(
                    account=account,
                    symbol=symbol,
                    side="BUY",
                    quantity=Decimal("10"),
                    price=Decimal("1"),
                    client_order_id=f"{prefix}{a}-{symbol}-{order_id}",
                    entry_order_id=order_id,
                    exchange_status="NEW",
                    exchange_update_time=placed_at,
                )
                for order_id in range(bulk["first_order_id"], bulk["last_order_id"] + 1)
            ]
        Trade.objects.bulk_create(rows)
        ids.append(account.pk)
    return ids


class _NoBudget(egress.WeightBudget):
    """The seed had no shared budget: nothing is ever held back, each process learns of a 429/418 on its own."""

    def acquire(self, egress: str, weight: int, cap: int, now_ms: int) -> None:
        return None

    def record_used(self, egress: str, used: int, now_ms: int) -> None:
        pass

    def mark_limited(self, egress: str, until_ms: int, banned: bool) -> None:
        pass

    def used(self, egress: str, now_ms: int) -> int:
        return 0

    def clear(self) -> None:
        pass


def _seed_worker(args):
    """One process of the naive approach: for each account, one order query per pending trade, until the deadline.
    Returns (trades verified, refused answers)."""
    account_ids, rest_url, deadline = args
    import django
    from django.conf import settings

    django.setup()
    settings.BINANCE_FUTURES_REST_URL = rest_url
    logging.getLogger("trades").setLevel(logging.CRITICAL)  # tens of thousands of refusals: counted, not logged
    from reconciliation.services import apply_order_snapshot, fetch_order
    from trades.binance_client import BinanceFuturesClient
    from trades.exceptions import RateLimited

    verified = refused = 0
    for account_id in account_ids:
        account = Account.objects.get(pk=account_id)
        with BinanceFuturesClient(
            account.api_key, account.api_secret, rest_url=rest_url, source_address=SEED_IP, budget=_NoBudget()
        ) as client:
            for trade in Trade.objects.get_pending_recent(account_id, limit=10**6):
                if time.time() >= deadline:
                    return verified, refused
                try:
                    apply_order_snapshot(trade, fetch_order(client, trade), "reconcile")
                    verified += 1
                except RateLimited:
                    refused += 1
    return verified, refused


class PeakWeight:
    """Samples the sandbox's per-IP used weight of the current minute; keeps the peak of each minute."""

    def __init__(self, control, ip: str) -> None:
        self.control, self.ip, self.peak = control, ip, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.control.stats()["used_weight_1m"].get(self.ip, 0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--trades", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=2.0, help="wall time each side runs")
    args = parser.parse_args()
    symbols = SYMBOLS[: args.symbols]
    per_account = (args.trades // len(symbols)) * len(symbols)
    window = args.minutes * 60

    # Binance's limits, as published: 2,400 weight/min per IP, real ban lengths.
    with running_sandbox() as sandbox, override_settings(BINANCE_FUTURES_REST_URL=sandbox.rest_url):
        control = sandbox.control
        t0 = time.perf_counter()
        run = f"{int(time.time()) % 100000}-"  # account names stay unique when DATABASE_URL is reused
        ours_ids = make_fleet(control, f"ours{run}", args.accounts, args.trades, symbols)
        seed_ids = make_fleet(control, f"seed{run}", args.accounts, args.trades, symbols)
        print(
            f"setup: {2 * args.accounts} accounts, {2 * args.accounts * per_account} pending trades in "
            f"{time.perf_counter() - t0:.0f}s"
        )
        egress.shared_budget().clear()

        # The seed's approach first: 2 processes, one GET per trade, no shared budget, from SEED_IP.
        Account.objects.filter(pk__in=ours_ids).update(is_active=False)
        connection.close()
        control.reset_stats()
        started = time.perf_counter()
        deadline = time.time() + window
        with PeakWeight(control, SEED_IP) as seed_peak, mp.get_context("fork").Pool(2) as pool:
            halves = pool.map(
                _seed_worker,
                [(seed_ids[0::2], sandbox.rest_url, deadline), (seed_ids[1::2], sandbox.rest_url, deadline)],
            )
        seed_wall = time.perf_counter() - started
        seed_stats = control.stats()
        seed_verified = sum(v for v, _ in halves)
        Account.objects.filter(pk__in=seed_ids).update(is_active=False)
        Account.objects.filter(pk__in=ours_ids).update(is_active=True)

        # Ours: beat's reconcile_all_accounts, fanned out to 2 worker processes over Redis, on OURS_IP's budget.
        app.control.purge()
        env = {
            **os.environ,
            **CHILD_ENV,
            "BINANCE_FUTURES_REST_URL": sandbox.rest_url,
            "PYTHONUNBUFFERED": "1",
            "BINANCE_SOURCE_ADDRESSES": OURS_IP,
        }
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tradeops",
                    "worker",
                    "--pool=prefork",
                    "--concurrency=1",
                    f"--hostname=bench{i}@%h",
                    "--without-mingle",
                    "--without-gossip",
                    "--loglevel=WARNING",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in (1, 2)
        ]
        try:
            ping_deadline = time.monotonic() + 60
            while len(app.control.ping(timeout=0.5) or []) < 2 and time.monotonic() < ping_deadline:
                pass
            control.reset_stats()
            egress.shared_budget().clear()
            started = time.perf_counter()
            with PeakWeight(control, OURS_IP) as ours_peak:
                fired = -60.0
                while time.perf_counter() - started < window:
                    if time.perf_counter() - fired >= 60:  # as beat does, every minute
                        app.send_task("reconciliation.tasks.reconcile_all_accounts")
                        fired = time.perf_counter()
                    done = sum(r.report.get("checked", 0) for r in ReconcileRun.objects.filter(account_id__in=ours_ids))
                    if done >= len(ours_ids) * per_account:
                        break
                    time.sleep(1)
            ours_wall = time.perf_counter() - started
            ours_stats = control.stats()
            ours_verified = sum(
                r.report.get("checked", 0)
                for r in ReconcileRun.objects.filter(
                    account_id__in=ours_ids, outcome__in=[ReconcileRun.Outcome.OK, ReconcileRun.Outcome.PARTIAL]
                )
            )
        finally:
            app.control.purge()
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(30)

    def row(name, wall, verified, peak, stats):
        # Per minute of the window: a side that stops early (banned, every call refused at once) verified nothing
        # more in the rest of it.
        statuses = stats["statuses"]
        return (
            name,
            wall,
            verified,
            verified / max(wall, window) * 60,
            peak,
            stats["total_weight"],
            statuses.get("429", 0),
            statuses.get("418", 0),
        )

    rows = [
        row("seed (1 GET per trade, no shared budget)", seed_wall, seed_verified, seed_peak.peak, seed_stats),
        row("ours (reconcile_all_accounts, fleet budget)", ours_wall, ours_verified, ours_peak.peak, ours_stats),
    ]
    print(
        f"\nfleet on one egress IP each: {args.accounts} accounts × {per_account} pending trades over "
        f"{len(symbols)} symbols, 2 worker processes, {args.minutes:g} min each, DB {connection.vendor}, broker "
        f"Redis, sandbox with Binance's per-IP limits (2,400 weight/min, 429 → 418 bans)\n"
    )
    print(
        "| approach | wall s | trades verified | trades/min | peak weight in one minute on the IP | weight sent "
        "| 429 | 418 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, wall, verified, per_min, peak, sent, n429, n418 in rows:
        print(f"| {name} | {wall:.0f} | {verified:,} | {per_min:,.0f} | {peak:,} | {sent:,} | {n429:,} | {n418:,} |")
    seed, ours = rows
    print(f"| ours/seed | | | {ours[3] / max(seed[3], 1e-9):.2f}× | | | | |")
    for name, *_, n429, n418 in rows:
        if n429 or n418:
            print(f"NOT A RESULT: {name} got {n429} × 429 and {n418} × 418 — Binance would have banned this IP")


if __name__ == "__main__":
    main()
