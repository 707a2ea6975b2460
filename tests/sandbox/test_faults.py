"""Fault injection through the control API, seen by python-binance's Client."""

from __future__ import annotations

import time

import pytest
import requests
from binance.exceptions import BinanceAPIException

from sandbox.control import SandboxControlError
from tests.helpers import wait_for

from .helpers import binance_client, limit_buy, sync_clock


def api_error(call, *args, **kwargs) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_5xx_for_the_next_n_requests_then_normal(futures_client, exchange, kind):
    exchange.control.inject_fault("/fapi/v1/openOrders", kind, count=2)
    for _ in range(2):
        assert api_error(futures_client.futures_get_open_orders).status_code == int(kind)
    assert futures_client.futures_get_open_orders() == []


def test_fault_can_be_limited_to_a_method(futures_client, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "500", method="DELETE")
    order = limit_buy(futures_client)  # POST is not affected
    assert api_error(futures_client.futures_cancel_order, symbol="BTCUSDT", orderId=order["orderId"]).status_code == 500
    assert futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=order["orderId"])["status"] == "CANCELED"


def test_plain_503_does_not_place_the_order(futures_client, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "503", method="POST")
    err = api_error(limit_buy, futures_client, newClientOrderId="not-placed")
    assert (err.status_code, err.message) == (503, "Service Unavailable.")
    assert api_error(futures_client.futures_get_order, symbol="BTCUSDT", origClientOrderId="not-placed").code == -2013


def test_503_unknown_placed_answers_503_but_the_order_exists(futures_client, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "503_unknown_placed", method="POST")
    err = api_error(limit_buy, futures_client, newClientOrderId="placed-anyway")
    assert (err.status_code, err.message) == (503, "Unknown error, please check your request or try again later.")
    order = futures_client.futures_get_order(symbol="BTCUSDT", origClientOrderId="placed-anyway")
    assert order["status"] == "NEW"


@pytest.mark.parametrize("kind,status", [("429", 429), ("418", 418)])
def test_injected_rate_limit_answers_carry_retry_after(futures_client, exchange, kind, status):
    exchange.control.inject_fault("/fapi/v1/order", kind, method="GET")
    err = api_error(futures_client.futures_get_order, symbol="BTCUSDT", orderId=1)
    assert (err.status_code, err.code) == (status, -1003)
    assert int(err.response.headers["Retry-After"]) > 0


def test_hang_outlasts_the_client_timeout_and_then_executes(exchange, account):
    impatient = binance_client(exchange, account, requests_params={"timeout": 0.3})
    exchange.control.inject_fault("/fapi/v1/order", "hang", method="POST", hang_sec=1.0)
    with pytest.raises(requests.exceptions.Timeout):
        limit_buy(impatient, newClientOrderId="slow-one")

    def placed():
        try:
            return exchange.control.get_order(account["api_key"], "BTCUSDT", client_order_id="slow-one")
        except SandboxControlError as err:
            assert err.status == 404
            return None

    assert wait_for(placed, timeout=5)["status"] == "NEW"


def test_cancel_loses_the_race_to_a_fill(futures_client, exchange, account):
    order = limit_buy(futures_client, newClientOrderId="racer")
    exchange.control.arm_cancel_race(account["api_key"], "BTCUSDT", client_order_id="racer")
    err = api_error(futures_client.futures_cancel_order, symbol="BTCUSDT", orderId=order["orderId"])
    assert (err.code, err.message) == (-2011, "Unknown order sent.")
    after = futures_client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])
    assert (after["status"], after["executedQty"], after["avgPrice"]) == ("FILLED", "0.010", "50000.00000")
    # armed for the account's next cancel, whatever order it is
    second = limit_buy(futures_client)
    exchange.control.arm_cancel_race(account["api_key"])
    assert api_error(futures_client.futures_cancel_order, symbol="BTCUSDT", orderId=second["orderId"]).code == -2011
    third = limit_buy(futures_client)
    assert futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=third["orderId"])["status"] == "CANCELED"


def test_not_found_window_right_after_placing(futures_client, exchange):
    exchange.control.set_not_found_window(60_000)
    order = limit_buy(futures_client)
    assert api_error(futures_client.futures_get_order, symbol="BTCUSDT", orderId=order["orderId"]).code == -2013
    exchange.control.advance_clock(60_001)
    sync_clock(futures_client)
    assert futures_client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])["status"] == "NEW"


def test_control_api_is_loopback_only_and_reset_wipes(exchange, account, futures_client):
    limit_buy(futures_client)
    exchange.control.inject_fault("/fapi/v1/ping", "500", count=10)
    exchange.control.reset()
    assert exchange.control.stats()["total_requests"] == 0
    fresh = binance_client(exchange, exchange.control.create_account())
    assert fresh.futures_ping() == {}  # the fault is gone too
    err = api_error(futures_client.futures_get_open_orders)  # and so is the old account
    assert err.code == -2015


@pytest.mark.parametrize("kind, placed", [("408", False), ("408_placed", True)])
def test_408_on_placement_with_or_without_the_order(futures_client, exchange, account, kind, placed):
    exchange.control.inject_fault("/fapi/v1/order", kind, method="POST")
    err = api_error(limit_buy, futures_client, newClientOrderId="maybe")
    assert (err.status_code, err.code) == (408, -1007)  # the same answer either way: the outcome is unknown
    found = exchange.control.get_order(account["api_key"], "BTCUSDT", client_order_id="maybe") if placed else None
    if placed:
        assert found["status"] == "NEW"
    else:
        with pytest.raises(SandboxControlError):
            exchange.control.get_order(account["api_key"], "BTCUSDT", client_order_id="maybe")


def test_408_placed_on_cancel_cancels(futures_client, exchange):
    order = limit_buy(futures_client)
    exchange.control.inject_fault("/fapi/v1/order", "408_placed", method="DELETE")
    assert api_error(futures_client.futures_cancel_order, symbol="BTCUSDT", orderId=order["orderId"]).status_code == 408
    assert futures_client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])["status"] == "CANCELED"


def test_a_hidden_order_answers_2013_is_left_out_of_lists_and_still_fills(futures_client, exchange, account):
    order = limit_buy(futures_client)
    seen = limit_buy(futures_client)
    exchange.control.hide_order(account["api_key"], "BTCUSDT", order_id=order["orderId"], seconds=120)
    assert api_error(futures_client.futures_get_order, symbol="BTCUSDT", orderId=order["orderId"]).code == -2013
    assert [o["orderId"] for o in futures_client.futures_get_all_orders(symbol="BTCUSDT")] == [seen["orderId"]]
    assert [o["orderId"] for o in futures_client.futures_get_open_orders(symbol="BTCUSDT")] == [seen["orderId"]]
    exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=order["orderId"])  # it lives
    exchange.control.advance_clock(120_001)
    sync_clock(futures_client)
    assert futures_client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])["status"] == "FILLED"
    assert len(futures_client.futures_get_all_orders(symbol="BTCUSDT")) == 2


def test_signed_requests_are_judged_by_the_sandbox_clock(futures_client, exchange):
    """-1021 unless timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow (Binance's timing rule)."""
    exchange.control.set_clock_offset(-2000)  # the exchange 2 s behind this host
    err = api_error(futures_client.futures_get_open_orders)
    assert (err.status_code, err.code, err.message) == (
        400,
        -1021,
        "Timestamp for this request was 1000ms ahead of the server's time.",
    )
    assert abs(futures_client.futures_time()["serverTime"] - exchange.control.server_time()) < 1000
    assert -2500 < sync_clock(futures_client) < -1500
    assert futures_client.futures_get_open_orders() == []
    exchange.control.set_clock_offset(30_000)  # now 30 s ahead: our stamps are too old
    err = api_error(futures_client.futures_get_open_orders)
    assert (err.code, err.message) == (-1021, "Timestamp for this request is outside of the recvWindow.")
    sync_clock(futures_client)
    assert futures_client.futures_get_open_orders() == []
    assert exchange.control.stats()["weight"]["GET /fapi/v1/time"] == 3  # weight 1 each
    exchange.control.reset()
    assert abs(exchange.control.server_time() - time.time() * 1000) < 1000
