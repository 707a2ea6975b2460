"""Requests/s the sandbox serves to python-binance's Client: signed GET /fapi/v1/order over keep-alive.

    .venv/bin/python bench/sandbox_rps.py [--seconds 5] [--threads 4] [--processes 2]

The sandbox runs in its own process (running_sandbox). Load comes from `processes` worker processes with
`threads` threads each, every thread with its own Client (own keep-alive session); one process with several
threads is measured too, because that is how a single bot process talks to Binance.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from binance.client import Client

from sandbox.testing import running_sandbox


def _worker(
    rest_url: str, api_key: str, api_secret: str, order_id: int, threads: int, seconds: float, out: mp.Queue
) -> None:
    counts = [0] * threads
    errors = [0] * threads
    start = time.monotonic() + 0.3  # let every thread build its client first
    stop = start + seconds

    def run(i: int) -> None:
        client = Client(api_key, api_secret, ping=False)
        client.FUTURES_URL = rest_url + "/fapi"
        client.futures_get_order(symbol="BTCUSDT", orderId=order_id)  # warm the keep-alive connection
        while time.monotonic() < start:
            time.sleep(0.001)
        n = 0
        while time.monotonic() < stop:
            try:
                client.futures_get_order(symbol="BTCUSDT", orderId=order_id)
                n += 1
            except Exception:  # noqa: BLE001 — counted, not raised: the error rate is one of the figures
                errors[i] += 1
        counts[i] = n

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((sum(counts), sum(errors)))


def measure(handle, account, order_id, processes: int, threads: int, seconds: float) -> tuple[float, int]:
    out: mp.Queue = mp.Queue()
    procs = [
        mp.Process(
            target=_worker,
            args=(handle.rest_url, account["api_key"], account["api_secret"], order_id, threads, seconds, out),
        )
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(r[0] for r in results)
    return total / seconds, sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with running_sandbox(weight_limit=10**9) as handle:
        account = handle.control.create_account()
        client = Client(account["api_key"], account["api_secret"], ping=False)
        client.FUTURES_URL = handle.rest_url + "/fapi"
        order = client.futures_create_order(
            symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.010", price="50000"
        )
        rows = [
            ("1 process x 1 thread", 1, 1),
            (f"1 process x {args.threads} threads", 1, args.threads),
            (f"{args.processes} processes x {args.threads} threads", args.processes, args.threads),
        ]
        best = 0.0
        for label, procs, threads in rows:
            handle.control.reset_stats()
            rps, errors = measure(handle, account, order["orderId"], procs, threads, args.seconds)
            served = handle.control.stats()["requests"].get("GET /fapi/v1/order", 0)
            best = max(best, rps)
            print(f"{label:>28}: {rps:8.0f} requests/s  (errors {errors}, server counted {served})", flush=True)
        print(f"sandbox signed GET /fapi/v1/order via python-binance: {best:.0f} requests/s (best of the above)")


if __name__ == "__main__":
    main()
