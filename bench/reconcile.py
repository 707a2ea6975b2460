"""Pending reconcile: the seed's approach (one GET /fapi/v1/order per pending trade), the previous one (per symbol,
a look-up per trade when few, one allOrders when many) and ours (reconciliation.services.reconcile_pending: one
openOrders per symbol, then only the orders not resting are looked up), same run, same data, through python-binance
against the sandbox.

    .venv/bin/python bench/reconcile.py [--sizes 50 500 5000] [--symbols 5] [--filled 0.1] [--audit-sec 600]

For each N: three accounts get identical books — N pending trades over S symbols, each noted NEW as its placement
answer left it, a fraction of them filled on the exchange — one reconciled each way. Figures: Binance weight (the
sandbox's counters), HTTP calls, DB queries, wall time, ours/seed and ours/previous ratios, and what that means
under Binance's limit of 2,400 weight a minute per IP: how many such accounts one egress IP can reconcile every
minute (stream unhealthy) and every --audit-sec (stream healthy: RECONCILE_AUDIT_SEC). The sandbox's weight limit
is lifted so the seed approach can finish at all: at N = 5000 it needs more weight than Binance allows an IP per
minute.
"""

import argparse
import sys
import time
from decimal import Decimal
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _django import setup_django

setup_django()

from unittest import mock

from django.db import connection
from django.test import override_settings

from reconciliation.services import apply_order_snapshot, fetch_order, reconcile_pending
from sandbox.testing import running_sandbox
from trades.binance_client import BinanceFuturesClient
from trades.models import Account, Trade

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]


def make_book(control, name: str, n: int, symbols: list[str], filled: float) -> Account:
    creds = control.create_account()
    account = Account.objects.create(name=name, api_key=creds["api_key"], api_secret=creds["api_secret"])
    per_symbol = n // len(symbols)
    for symbol in symbols:
        bulk = control.bulk_orders(
            creds["api_key"], symbol, per_symbol, price="1", quantity="10", client_order_id_prefix=f"{name}-{symbol}-"
        )
        ids = range(bulk["first_order_id"], bulk["last_order_id"] + 1)
        Trade.objects.bulk_create(
            [
                Trade(
                    account=account,
                    symbol=symbol,
                    side="BUY",
                    quantity=Decimal("10"),
                    price=Decimal("1"),
                    client_order_id=f"{name}-{symbol}-{order_id}",
                    entry_order_id=order_id,
                    exchange_status="NEW",
                    exchange_update_time=0,
                )
                for order_id in ids
            ]
        )
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


def previous_reconcile(account: Account) -> dict:
    """reconcile_pending without openOrders: the approach before it (per order when few, allOrders when many)."""
    with mock.patch("reconciliation.reconcile.pending._worth_open_orders", lambda trades: False):
        return reconcile_pending(account, reason="bench")


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
    return {
        "weight": stats["total_weight"],
        "http": stats["total_requests"],
        **counts,
        "wall": wall,
        "opened": result["opened"],
    }


LIMIT_PER_MINUTE = 2400  # Binance's request weight per IP per minute (exchangeInfo.rateLimits)


def per_ip(weight: int, every_sec: int) -> str:
    """Accounts like this one an IP can reconcile every `every_sec`, within LIMIT_PER_MINUTE."""
    per_minute = weight * 60 / every_sec
    return f"{int(LIMIT_PER_MINUTE // per_minute):,}" if per_minute else "∞"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 5000])
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--filled", type=float, default=0.1)
    parser.add_argument("--audit-sec", type=int, default=600)
    args = parser.parse_args()
    symbols = SYMBOLS[: args.symbols]

    rows = []
    with (
        running_sandbox(weight_limit=10**9) as sandbox,
        override_settings(BINANCE_FUTURES_REST_URL=sandbox.rest_url, RECONCILE_WEIGHT_BUDGET=10**9),
    ):
        for n in args.sizes:
            books = {
                name: make_book(sandbox.control, f"{name}{n}", n, symbols, args.filled)
                for name in ("seed", "prev", "ours")
            }
            runs = {
                "seed": partial(seed_reconcile, books["seed"]),
                "previous": partial(previous_reconcile, books["prev"]),
                "ours": partial(reconcile_pending, books["ours"], reason="bench"),
            }
            for again in ("", " again"):  # " again": the next beat, nothing new on the exchange
                figures = {name: measure(sandbox.control, run) for name, run in runs.items()}
                expected = 0 if again else int(n // len(symbols) * args.filled) * len(symbols)
                assert {f["opened"] for f in figures.values()} == {expected}, figures
                rows.append((n, figures, again))

    print(
        f"\npending reconcile, S = {len(symbols)} symbols, {args.filled:.0%} of orders filled "
        f"(sandbox over HTTP through python-binance; DB: {connection.vendor})\n"
    )
    print("DB reads = SELECTs; DB writes = everything else (the first look at each order notes its updateTime once;")
    print("each filled trade is UPDATE + SELECT + INSERT of its audit event, in a transaction).")
    print("'again': the next run with nothing new on the exchange. accounts/IP: how many such accounts one egress IP")
    print(
        f"reconciles within Binance's {LIMIT_PER_MINUTE:,} weight/min, every minute (stream unhealthy) and every "
        f"{args.audit_sec} s (stream healthy).\n"
    )
    header = (
        f"| {'N':>5} | {'approach':<14} | {'weight':>6} | {'HTTP':>5} | {'DB reads':>8} | {'DB writes':>9} | "
        f"{'wall s':>6} | {'opened':>6} | {'accounts/IP, 60 s':>17} | "
        f"{f'accounts/IP, {args.audit_sec} s':>{max(17, 16 + len(str(args.audit_sec)))}} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    wide = max(17, 16 + len(str(args.audit_sec)))
    for n, figures, again in rows:
        for name, r in figures.items():
            audit = per_ip(r["weight"], args.audit_sec) if name == "ours" else "—"
            print(
                f"| {n:>5} | {name + again:<14} | {r['weight']:>6} | {r['http']:>5} | {r['reads']:>8} | "
                f"{r['writes']:>9} | {r['wall']:>6.2f} | {r['opened']:>6} | {per_ip(r['weight'], 60):>17} | "
                f"{audit:>{wide}} |"
            )
        ours = figures["ours"]
        for base in ("seed", "previous"):
            b = figures[base]
            print(
                f"| {n:>5} | {'ours/' + base:<14} | {ours['weight'] / b['weight']:>6.3f} | "
                f"{ours['http'] / b['http']:>5.3f} | {ours['reads'] / b['reads']:>8.3f} | "
                f"{ours['writes'] / max(b['writes'], 1):>9.3f} | {ours['wall'] / b['wall']:>6.3f} | {'':>6} | "
                f"{'':>17} | {'':>{wide}} |"
            )


if __name__ == "__main__":
    main()
