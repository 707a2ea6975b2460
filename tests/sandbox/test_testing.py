"""running_sandbox(): the subprocess life cycle other test suites and benchmarks rely on."""

from __future__ import annotations

import time

from binance.client import Client

from sandbox.testing import running_sandbox


def test_running_sandbox_starts_a_process_and_stops_it_cleanly():
    with running_sandbox(weight_limit=7, clock_offset_ms=-5000) as handle:
        assert handle.rest_url.startswith("http://127.0.0.1:") and handle.ws_url == "ws" + handle.rest_url[4:]
        client = Client("k", "s", ping=False)
        client.FUTURES_URL = handle.rest_url + "/fapi"
        assert client.futures_exchange_info()["rateLimits"][0]["limit"] == 7
        assert handle.control.health()["ok"] is True
        behind = time.time() * 1000 - client.futures_time()["serverTime"]
        handle.control.reset()  # the configured offset survives a reset
        assert 4000 < behind < 6000 and 4000 < time.time() * 1000 - handle.control.server_time() < 6000
        process = handle.process
    assert process.returncode == 0  # SIGTERM is handled: a clean shutdown, not a kill


def test_exchange_fixture_yields_a_clean_sandbox(exchange):
    assert exchange.control.stats()["total_requests"] == 0
    assert exchange.control.create_account(api_key="fixed-key", api_secret="fixed-secret") == {
        "api_key": "fixed-key",
        "api_secret": "fixed-secret",
        "balance": "100000",
    }
