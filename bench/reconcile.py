"""Pending reconcile: the seed's approach (one GET /fapi/v1/order per pending trade) against ours
(reconciliation.services.reconcile_pending), same run, same data, through python-binance against the sandbox.

    .venv/bin/python bench/reconcile.py [--sizes 50 500 5000] [--symbols 5] [--filled 0.1]

For each N: two accounts get identical books — N pending trades over S symbols, a fraction of them filled on the
exchange — one reconciled each way. Figures: Binance weight (the sandbox's counters), HTTP calls, DB queries, wall
time, and ours/seed ratios. The sandbox's weight limit is lifted so the seed approach can finish at all: at
N = 5000 it needs more weight than Binance allows an IP per minute (2400).
"""

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _django import setup_django  # noqa: E402

setup_django()

from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402

from reconciliation.services import apply_order_snapshot, fetch_order, reconcile_pending  # noqa: E402
from sandbox.testing import running_sandbox  # noqa: E402
from trades.binance_client import BinanceFuturesClient  # noqa: E402
from trades.models import Account, Trade  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]


def make_book(control, name: str, n: int, symbols: list[str], filled: float) -> Account:
    creds = control.create_account()
    account = Account.objects.create(name=name, api_key=creds["api_key"], api_secret=creds["api_secret"])
    per_symbol = n // len(symbols)
    for symbol in symbols:
        bulk = control.bulk_orders(creds["api_key"], symbol, per_symbol, price="1", quantity="10",
                                   client_order_id_prefix=f"{name}-{symbol}-")
        ids = range(bulk["first_order_id"], bulk["last_order_id"] + 1)
        Trade.objects.bulk_create([
            Trade(account=account, symbol=symbol, side="BUY", quantity=Decimal("10"), price=Decimal("1"),
                  client_order_id=f"{name}-{symbol}-{order_id}") for order_id in ids
        ])
        for order_id in list(ids)[: int(per_symbol * filled)]:
            control.fill_order(creds["api_key"], symbol, order_id=order_id)
    return account


def seed_reconcile(account: Account) -> dict:
    """The seed's _reconcile_pending_with_binance: get_pending_recent, then one order query per trade."""
    client = BinanceFuturesClient.for_account(account)
    opened = 0
    for trade in Trade.objects.get_pending_recent(account.pk, limit=10**9):
        opened += apply_order_snapshot(trade, fetch_order(client, trade), "reconcile") == "opened"
    return {"opened": opened, "http_calls": client.http_calls}


def measure(control, run) -> dict:
    control.reset_stats()
    counts = {"reads": 0, "writes": 0}

    def count(execute, sql, params, many, context):
        counts["reads" if sql.lstrip().upper().startswith("SELECT") else "writes"] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        started = time.perf_counter()
        result = run()
        wall = time.perf_counter() - started
    stats = control.stats()
    return {"weight": stats["total_weight"], "http": stats["total_requests"], **counts, "wall": wall,
            "opened": result["opened"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 5000])
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--filled", type=float, default=0.1)
    args = parser.parse_args()
    symbols = SYMBOLS[: args.symbols]

    rows = []
    with running_sandbox(weight_limit=10**9) as sandbox, override_settings(
        BINANCE_FUTURES_REST_URL=sandbox.rest_url, RECONCILE_WEIGHT_BUDGET=10**9
    ):
        for n in args.sizes:
            seed_account = make_book(sandbox.control, f"seed{n}", n, symbols, args.filled)
            ours_account = make_book(sandbox.control, f"ours{n}", n, symbols, args.filled)
            seed = measure(sandbox.control, lambda: seed_reconcile(seed_account))
            ours = measure(sandbox.control, lambda: reconcile_pending(ours_account, reason="bench"))
            assert seed["opened"] == ours["opened"] == int(n // len(symbols) * args.filled) * len(symbols)
            rows.append((n, seed, ours, ""))
            # The next beat: nothing new on the exchange.
            seed = measure(sandbox.control, lambda: seed_reconcile(seed_account))
            ours = measure(sandbox.control, lambda: reconcile_pending(ours_account, reason="bench"))
            rows.append((n, seed, ours, " again"))

    print(f"\npending reconcile, S = {len(symbols)} symbols, {args.filled:.0%} of orders filled "
          f"(sandbox over HTTP through python-binance; DB: {connection.vendor})\n")
    print("DB reads = SELECTs; DB writes = everything else (the first look at a NEW order notes its order id and")
    print("updateTime once; each filled trade is UPDATE + SELECT + INSERT of its audit event, in a transaction).")
    print("'again': the next run with nothing new on the exchange.\n")
    header = (f"| {'N':>5} | {'approach':<10} | {'weight':>6} | {'HTTP':>5} | {'DB reads':>8} | {'DB writes':>9} | "
              f"{'wall s':>6} | {'opened':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for n, seed, ours, again in rows:
        for name, r in (("seed" + again, seed), ("ours" + again, ours)):
            print(f"| {n:>5} | {name:<10} | {r['weight']:>6} | {r['http']:>5} | {r['reads']:>8} | {r['writes']:>9} | "
                  f"{r['wall']:>6.2f} | {r['opened']:>6} |")
        print(f"| {n:>5} | {'ours/seed':<10} | {ours['weight'] / seed['weight']:>6.3f} | "
              f"{ours['http'] / seed['http']:>5.3f} | {ours['reads'] / seed['reads']:>8.3f} | "
              f"{ours['writes'] / max(seed['writes'], 1):>9.3f} | {ours['wall'] / seed['wall']:>6.3f} | {'':>6} |")


if __name__ == "__main__":
    main()
