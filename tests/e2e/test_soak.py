"""A randomized soak on the real stack: ≥ 200 trades over 3 accounts and 4 symbols through the bot's flow, with
faults drawn from the fault matrix (docs/DESIGN.md) while they trade. Seeded and reproducible: SOAK_SEED=<n> replays a run; the
seed is printed (and in the failure message). At the end, docs/DESIGN.md "Fault matrix"'s invariant must hold for every trade."""

import os
import random
import signal
import uuid
from decimal import Decimal

import pytest

from reconciliation import tasks
from sandbox.control import SandboxControlError
from trades.models import Trade

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SYMBOLS = {"BTCUSDT": "50000", "ETHUSDT": "3000", "SOLUSDT": "150", "BNBUSDT": "600"}
# Each quantity's half (the partial fills) is a whole number of the symbol's lot steps (SOLUSDT: step 1), as every
# fill on Binance is. (SOLUSDT was 1: its 0.5 fills sat in the sandbox's position while every answer rounded them to
# "0" — an unexplainable position, the "position invariant on SOLUSDT" of seed 448669121.)
QTY = {"BTCUSDT": "0.010", "ETHUSDT": "0.100", "SOLUSDT": "2", "BNBUSDT": "0.10"}
SCENARIOS = [
    "fill",
    "fill",
    "partial_then_timeout",
    "no_fill_timeout",
    "cancel_race",
    "partial_then_expire",
    "market",
    "never_placed",
    "fill_later",
]
FAULTS = [
    "drop_ws",
    "pause_events",
    "expire_listen_key",
    "http_5xx",
    "http_hang",
    "kill_stream",
    "kill_worker_child",
    "not_found_window",
]


def on_the_exchange(control, account, symbol: str, cid: str) -> str | None:
    """ "placed" once the exchange's own truth (the control API, which ignores injected faults) has the order and
    the trade has heard of it; "never placed" once the trade ended without it (a placement whose worker process was
    killed before it was sent: the rule fails it after the grace, and the row is one the bot never placed); None
    meanwhile. The trade's exchange_status alone is no proof of placement: a reconcile's -2013 sets it (NOT_FOUND)
    while the placement is still in flight or was killed, and filling then met a 404 from the control API."""
    trade = Trade.objects.filter(account=account, client_order_id=cid).first()
    if trade is None:
        return None
    try:
        control.get_order(account.api_key, symbol, client_order_id=cid)
    except SandboxControlError as exc:
        if exc.status != 404:
            raise
        return "never placed" if trade.status != Trade.Status.PENDING else None
    return "placed" if trade.exchange_status not in ("", "PLACING") else None


def test_randomized_soak(e2e):
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"\nsoak seed: {seed}  (replay: SOAK_SEED={seed})")
    rng = random.Random(seed)
    control, stack = e2e.control, e2e.stack
    accounts = [e2e.account() for _ in range(3)]  # each streaming, its first reconcile done
    e2e.start_beat()
    paused, later, stream_down_until = {}, [], None
    trades = []

    for i in range(int(os.environ.get("SOAK_TRADES", "210"))):
        account = rng.choice(accounts)
        symbol = rng.choice(list(SYMBOLS))
        scenario = rng.choice(SCENARIOS)
        cid = f"soak{seed % 10000}-{i}-{uuid.uuid4().hex[:8]}"
        if scenario == "never_placed":  # the bot died between the row and the order
            trades.append(
                Trade.objects.create(
                    account=account,
                    symbol=symbol,
                    side="BUY",
                    quantity=Decimal(QTY[symbol]),
                    price=Decimal(SYMBOLS[symbol]),
                    client_order_id=cid,
                )
            )
            continue
        timeout = rng.uniform(2, 4) if scenario in ("partial_then_timeout", "no_fill_timeout", "cancel_race") else 600
        price = None if scenario == "market" else SYMBOLS[symbol]
        tasks.open_position.delay(
            account.pk,
            symbol,
            rng.choice(["BUY", "SELL"]),
            QTY[symbol],
            price,
            timeout_sec=timeout,
            client_order_id=cid,
        )
        placed = wait_for(
            lambda a=account, s=symbol, c=cid: on_the_exchange(control, a, s, c),
            timeout=60,
            message=f"{cid} placed (seed {seed})",
        )
        trades.append(Trade.objects.get(account=account, client_order_id=cid))
        ref = {"client_order_id": cid}
        if placed == "never placed":
            pass  # nothing on the exchange to fill, expire or race
        elif scenario == "fill":
            control.fill_order(account.api_key, symbol, **ref)
        elif scenario in ("partial_then_timeout", "partial_then_expire"):
            control.fill_order(account.api_key, symbol, qty=Decimal(QTY[symbol]) / 2, **ref)  # on the lot step
            if scenario == "partial_then_expire":
                control.expire_order(account.api_key, symbol, **ref)
        elif scenario == "cancel_race":
            control.arm_cancel_race(account.api_key, symbol, **ref)
        elif scenario == "fill_later":
            later.append((account, symbol, cid))

        if i % 12 == 11:  # a fault from the matrix
            fault = rng.choice(FAULTS)
            victim = rng.choice(accounts)
            if fault == "drop_ws":
                control.drop_connections(victim.api_key)
            elif fault == "pause_events" and victim.pk not in paused:
                control.pause_events(victim.api_key)
                paused[victim.pk] = (victim, i + rng.randint(3, 10))
            elif fault == "expire_listen_key":
                control.expire_listen_key(victim.api_key)
            elif fault == "http_5xx":
                control.inject_fault(
                    "/fapi/v1/order", rng.choice(["500", "502", "503"]), count=rng.randint(1, 3), method="GET"
                )
            elif fault == "http_hang":
                control.inject_fault("/fapi/v1/order", "hang", count=1, method="GET", hang_sec=2.5)
            elif fault == "kill_stream" and stream_down_until is None:
                stack.kill("stream")
                stream_down_until = i + rng.randint(2, 6)
            elif fault == "kill_worker_child":
                for pid in stack.pool_children(rng.choice(["worker1", "worker2"])):
                    os.kill(pid, signal.SIGKILL)
            elif fault == "not_found_window":
                control.set_not_found_window(rng.choice([0, 1500]))
        for pk, (victim, until) in list(paused.items()):
            if i >= until:
                control.resume_events(victim.api_key)
                del paused[pk]
        if stream_down_until is not None and i >= stream_down_until:
            stack.start_stream()
            stream_down_until = None
        if later and rng.random() < 0.3:
            account_, symbol_, cid_ = later.pop(0)
            control.fill_order(account_.api_key, symbol_, client_order_id=cid_)

    for victim, _ in paused.values():
        control.resume_events(victim.api_key)
    if stream_down_until is not None:
        stack.start_stream()
    for account_, symbol_, cid_ in later:
        control.fill_order(account_.api_key, symbol_, client_order_id=cid_)
    control.set_not_found_window(0)

    assert len(trades) >= 200
    try:
        e2e.settle(accounts, timeout=240)
    except AssertionError as exc:
        raise AssertionError(f"soak seed {seed}: {exc}") from None
    stack.assert_alive("worker1", "worker2", "stream")
    statuses = sorted({t.status for t in Trade.objects.filter(account__in=accounts)})
    print(f"soak seed {seed}: {len(trades)} trades settled; statuses {statuses}")
