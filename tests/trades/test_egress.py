"""The fleet-wide weight budget per egress IP (trades/egress.py) and the egress pool, against the per-IP sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.helpers import wait_for
from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import RateLimited

REPO = Path(__file__).resolve().parents[2]
SYMBOL = "BTCUSDT"
NOW = 1_800_000_000_000  # on a minute boundary


def stores(tmp_path):
    found = [egress.SqliteBudget(str(tmp_path / "budget.sqlite3"))]
    if django_settings.CELERY_BROKER_URL.startswith("redis://"):
        found.append(egress.RedisBudget(django_settings.CELERY_BROKER_URL, f"test-egress-{os.getpid()}"))
    return found


def test_a_store_counts_per_egress_and_minute_and_refuses_past_the_cap(tmp_path):
    for budget in stores(tmp_path):
        budget.clear()
        assert budget.acquire("a", 5, 10, NOW) is None
        assert budget.acquire("a", 5, 10, NOW + 1) is None
        refusal = budget.acquire("a", 1, 10, NOW + 2)
        assert refusal is not None and refusal.reason == "budget" and not refusal.banned
        assert refusal.retry_after == pytest.approx(59.998)  # until the minute rolls
        assert budget.acquire("a", 0, 10, NOW + 3) is None  # weight 0 (a new order) always passes
        assert budget.acquire("b", 10, 10, NOW) is None  # another egress: its own count
        assert budget.acquire("a", 10, 10, NOW + 60_000) is None  # a new minute: a fresh count
        budget.record_used("b", 3, NOW)  # Binance says less: keep ours
        assert budget.used("b", NOW) == 10
        budget.record_used("b", 40, NOW)  # Binance says more (someone else's traffic)
        assert budget.used("b", NOW) == 40
        budget.clear()


def test_a_429_or_418_mark_stops_everyone_until_it_ends_and_the_longest_wins(tmp_path):
    for budget in stores(tmp_path):
        budget.clear()
        budget.mark_limited("a", NOW + 120_000, banned=True)
        budget.mark_limited("a", NOW + 30_000, banned=False)  # a shorter 429 later does not shorten the ban
        refusal = budget.acquire("a", 0, 2400, NOW)  # banned: even a new order is held back
        assert (refusal.reason, refusal.banned, refusal.retry_after) == ("limited", True, 120.0)
        assert budget.acquire("b", 1, 2400, NOW) is None  # only that egress
        assert budget.acquire("a", 1, 2400, NOW + 120_000) is None  # over: sending again
        budget.mark_limited("c", NOW + 30_000, banned=False)
        assert budget.acquire("c", 1, 2400, NOW).reason == "limited"
        assert budget.acquire("c", 0, 2400, NOW) is None  # a new order weighs 0: a 429 does not stop it
        budget.clear()


def test_priorities_share_the_budget_orders_first():
    assert [
        egress.PRIORITY_SHARES[p] for p in ("order", "verify", "keepalive", "reconcile", "deep", "positions")
    ] == sorted(egress.PRIORITY_SHARES.values(), reverse=True)
    with pytest.raises(ValueError):
        BinanceFuturesClient("k" * 64, "s" * 64, priority="urgent")


def test_under_pressure_each_priority_stops_at_its_share(exchange, settings):
    settings.BINANCE_WEIGHT_LIMIT = 100
    account = exchange.control.create_account()

    def client(priority):
        return BinanceFuturesClient(
            account["api_key"], account["api_secret"], rest_url=exchange.rest_url, priority=priority
        )

    budget = egress.shared_budget()
    stopped_at = {}
    for priority in ("positions", "reconcile", "verify"):
        with client(priority) as gateway:
            while True:
                try:
                    gateway.get_open_orders(SYMBOL)
                except RateLimited as exc:
                    assert exc.status is None
                    break
            stopped_at[priority] = budget.used(gateway.egress, gateway.exchange_time_ms())
    assert stopped_at == {"positions": 50, "reconcile": 80, "verify": 95}
    # Shares are caps, not reservations: whatever the position sync (and the deep pass) took first in a minute, the
    # pending reconcile keeps 30 % of it, 720 of Binance's 2,400 (the audit of 1,000 healthy accounts needs ~530).
    assert stopped_at["reconcile"] - stopped_at["positions"] >= 30
    # nothing refused was sent (this account's requests: other tests' leftovers may reach the session's sandbox)
    assert exchange.control.stats()["statuses_by_api_key"][account["api_key"]] == {"200": 95}


def test_an_accounts_order_rate_limit_does_not_stop_the_other_accounts_on_the_ip(exchange):
    busy, quiet = exchange.control.create_account(), exchange.control.create_account()
    with BinanceFuturesClient(busy["api_key"], busy["api_secret"], rest_url=exchange.rest_url) as gateway:
        for _ in range(700):  # 300 orders per 10 s per account (exchangeInfo.rateLimits)
            try:
                gateway.place_order(SYMBOL, "BUY", "0.010", price="1000")
            except RateLimited as exc:
                assert (exc.status, exc.code) == (429, -1015)
                break
        else:
            pytest.fail("the account's ORDERS limit never answered 429")
    with BinanceFuturesClient(quiet["api_key"], quiet["api_secret"], rest_url=exchange.rest_url) as other:
        other.get_open_orders(SYMBOL)  # the IP is not limited: only that account's orders are


def test_without_its_budget_store_the_gateway_sends_nothing(exchange):
    account = exchange.control.create_account()
    unreachable = egress.RedisBudget("redis://127.0.0.1:1/0", "nowhere")  # nothing listens on port 1
    with (
        BinanceFuturesClient(
            account["api_key"], account["api_secret"], rest_url=exchange.rest_url, budget=unreachable
        ) as gateway,
        pytest.raises(RateLimited) as caught,
    ):
        gateway.place_order(SYMBOL, "BUY", "0.010", price="1000")
    assert caught.value.status is None and caught.value.retry_after == 5
    assert exchange.control.stats()["total_requests"] == 0


# --- egress pools ------------------------------------------------------------------------------------------------


def test_accounts_are_spread_over_the_source_addresses_stably_by_id(settings):
    settings.BINANCE_SOURCE_ADDRESSES = "127.0.0.2, 127.0.0.3"
    assert [egress.source_address_for(pk) for pk in (1, 2, 3, 4)] == [
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
    ]
    settings.BINANCE_SOURCE_ADDRESSES = ""
    assert egress.source_address_for(1) is None  # the default route


def test_each_source_address_is_seen_by_binance_and_has_its_own_budget(binance, make_account, settings):
    settings.BINANCE_SOURCE_ADDRESSES = "127.0.0.2,127.0.0.3"
    first, second = make_account(), make_account()
    by_address = {egress.source_address_for(a.pk): a for a in (first, second)}
    assert set(by_address) == {"127.0.0.2", "127.0.0.3"}
    binance.control.inject_fault("/fapi/v1/openOrders", "429", retry_after=30)
    with BinanceFuturesClient.for_account(by_address["127.0.0.2"]) as near:
        assert near.source_address == "127.0.0.2"
        with pytest.raises(RateLimited) as caught:
            near.get_open_orders(SYMBOL)
        assert caught.value.status == 429
        with pytest.raises(RateLimited) as caught:  # held back on this address
            near.get_open_orders(SYMBOL)
        assert caught.value.status is None
    with BinanceFuturesClient.for_account(by_address["127.0.0.3"]) as far:
        far.get_open_orders(SYMBOL)  # the other address is not limited
    used = binance.control.stats()["used_weight_1m"]
    assert set(used) == {"127.0.0.2", "127.0.0.3"}  # Binance saw both, and nothing else


# --- the budget is shared between processes ------------------------------------------------------------------------

CALL_ONCE = """
import json, sys
from django.conf import settings
settings.configure(BINANCE_BUDGET_URL=sys.argv[1], BINANCE_BUDGET_PREFIX=sys.argv[2], BINANCE_WEIGHT_LIMIT=2400)
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import RateLimited
gateway = BinanceFuturesClient(sys.argv[3], sys.argv[4], rest_url=sys.argv[5])
try:
    gateway.get_open_orders("BTCUSDT")
    out = {"status": 200}
except RateLimited as exc:
    out = {"status": exc.status, "retry_after": exc.retry_after, "banned": exc.banned}
print(json.dumps({**out, "http_calls": gateway.http_calls}))
"""


def call_in_another_process(exchange, account) -> dict:
    """One GET openOrders from a fresh process (its own gateway, clock and memory) on the same budget store."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CALL_ONCE,
            egress.budget_url(),
            django_settings.BINANCE_BUDGET_PREFIX,
            account["api_key"],
            account["api_secret"],
            exchange.rest_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three processes and a real 3 s Retry-After
def test_a_429_seen_by_one_process_stops_another_until_retry_after_without_it_sending(exchange):
    account = exchange.control.create_account()
    exchange.control.inject_fault("/fapi/v1/openOrders", "429", retry_after=3)
    first = call_in_another_process(exchange, account)
    assert first["status"] == 429

    def sent_by_this_account() -> int:  # the sandbox is shared by the session: count this key's requests only
        return exchange.control.stats()["requests_by_api_key"].get(account["api_key"], 0)

    sent = sent_by_this_account()
    assert sent >= 1
    second = call_in_another_process(exchange, account)
    assert second["status"] is None and 0 < second["retry_after"] <= 3 and not second["banned"]
    assert second["http_calls"] == 0 and sent_by_this_account() == sent
    wait_for(
        lambda: call_in_another_process(exchange, account)["status"] == 200,
        timeout=20,
        message="served again once Retry-After has passed",
    )


@pytest.mark.slow  # three processes
def test_a_418_ban_seen_by_one_process_is_honoured_by_the_others(exchange):
    account = exchange.control.create_account()
    exchange.control.inject_fault("/fapi/v1/openOrders", "418", retry_after=120)
    assert call_in_another_process(exchange, account)["status"] == 418
    started = time.monotonic()
    other = call_in_another_process(exchange, account)
    assert other["status"] is None and other["banned"] and other["http_calls"] == 0
    assert 120 - (time.monotonic() - started) - 5 < other["retry_after"] <= 120
