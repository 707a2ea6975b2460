"""BinanceFuturesClient against the sandbox exchange, over real HTTP (python-binance → requests → aiohttp).

Every error mapping is produced by a real response: faults are injected in the sandbox, nothing of python-binance
is mocked. Needs the sandbox fixtures (``exchange``): tests/conftest.py loads sandbox.pytest_plugin, or run with
``-p sandbox.pytest_plugin``.
"""

from __future__ import annotations

import email.utils
import logging
import pickle
import socket
import threading
import time
import traceback
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from types import SimpleNamespace

import pytest

from tests.helpers import wait_for
from trades.binance_client import (
    ALL_ORDERS_MAX_WINDOW_MS,
    EXCHANGE_CLOCK,
    TRANSIENT_ERRORS,
    BinanceFuturesClient,
    ClockSkew,
    ExchangeError,
    ExchangeUnavailable,
    ListenKeyExpired,
    OrderNotFound,
    RateLimited,
    UnknownOrder,
)
from trades.egress import EXCHANGE_LIMITS, NoBudget, shared_budget

SYMBOL = "BTCUSDT"
PRICE = Decimal("50000.0")  # below the sandbox's 60000: a LIMIT BUY rests on the book
QTY = Decimal("0.010")
DAY_MS = 86_400_000


def make_gateway(handle, account: dict, **kwargs) -> BinanceFuturesClient:
    kwargs.setdefault("timeout", 5)
    return BinanceFuturesClient(
        account["api_key"], account["api_secret"], rest_url=handle.rest_url, account_label="test#1", **kwargs
    )


@pytest.fixture
def account(exchange) -> dict:
    return exchange.control.create_account()


@pytest.fixture
def gateway(exchange, account):
    with make_gateway(exchange, account) as gw:
        yield gw


def place_resting(gateway, client_order_id=None, **kwargs) -> dict:
    return gateway.place_order(SYMBOL, "BUY", QTY, price=PRICE, client_order_id=client_order_id, **kwargs)


def requests_to(exchange, endpoint: str) -> int:
    return exchange.control.stats()["requests"].get(endpoint, 0)


# --------------------------------------------------------------------------- orders, happy paths


def test_place_and_get_order_returns_binance_dict_with_string_decimals(gateway):
    placed = place_resting(gateway, client_order_id="t-place-1")
    assert placed["clientOrderId"] == "t-place-1"
    assert placed["origQty"] == "0.010" and placed["price"] == "50000.00"

    by_id = gateway.get_order(SYMBOL, placed["orderId"])
    by_client_id = gateway.get_order_by_client_order_id(SYMBOL, "t-place-1")
    assert by_id == by_client_id
    assert by_id["status"] == "NEW"
    assert isinstance(by_id["executedQty"], str) and isinstance(by_id["avgPrice"], str)


def test_place_order_never_takes_floats_and_generates_a_client_order_id(gateway):
    calls = gateway.http_calls
    with pytest.raises(TypeError):
        gateway.place_order(SYMBOL, "BUY", 0.01, price=PRICE)
    with pytest.raises(ValueError):
        gateway.place_order(SYMBOL, "BUY", QTY)  # LIMIT without price
    assert gateway.http_calls == calls  # rejected before any request

    placed = gateway.place_order(SYMBOL, "BUY", Decimal("1E-2"), price="50000")
    assert placed["origQty"] == "0.010"  # sent as "0.01", not "1E-2"
    assert placed["clientOrderId"].startswith("tradeops-")


def test_market_order_position_and_user_trades(gateway):
    order = gateway.place_order(SYMBOL, "BUY", QTY, order_type="MARKET", client_order_id="t-mkt")
    assert gateway.get_order(SYMBOL, order["orderId"])["status"] == "FILLED"

    positions = {p["symbol"]: p for p in gateway.get_positions()}
    assert positions[SYMBOL]["positionAmt"] == "0.010"

    trades = gateway.get_user_trades(SYMBOL)
    assert [t["orderId"] for t in trades] == [order["orderId"]]
    assert trades[0]["qty"] == "0.010"

    reduce = gateway.place_order(SYMBOL, "SELL", QTY, order_type="MARKET", reduce_only=True)
    assert reduce["reduceOnly"] is True


def test_open_orders_and_cancel(gateway):
    first = place_resting(gateway, client_order_id="t-open-1")
    place_resting(gateway, client_order_id="t-open-2")
    assert {o["clientOrderId"] for o in gateway.get_open_orders(SYMBOL)} == {"t-open-1", "t-open-2"}
    assert len(gateway.get_open_orders()) == 2

    cancelled = gateway.cancel_order(SYMBOL, order_id=first["orderId"])
    assert cancelled["status"] == "CANCELED"
    cancelled = gateway.cancel_order(SYMBOL, client_order_id="t-open-2")
    assert cancelled["status"] == "CANCELED"
    assert gateway.get_open_orders(SYMBOL) == []
    with pytest.raises(ValueError):
        gateway.cancel_order(SYMBOL)


# --------------------------------------------------------------------------- Binance's "no"


def test_missing_order_is_none_not_an_error(gateway, exchange):
    assert gateway.get_order(SYMBOL, 123) is None
    assert gateway.get_order_by_client_order_id(SYMBOL, "never-placed") is None

    # -2013 right after placing (Binance's eventual consistency) is also None.
    place_resting(gateway, client_order_id="t-young")
    exchange.control.set_not_found_window(60_000)
    assert gateway.get_order_by_client_order_id(SYMBOL, "t-young") is None
    exchange.control.set_not_found_window(0)
    assert gateway.get_order_by_client_order_id(SYMBOL, "t-young")["status"] == "NEW"


def test_cancel_of_a_finished_order_is_unknown_order(gateway, exchange, account):
    order = place_resting(gateway, client_order_id="t-cancel-twice")
    gateway.cancel_order(SYMBOL, order_id=order["orderId"])
    with pytest.raises(UnknownOrder) as caught:
        gateway.cancel_order(SYMBOL, order_id=order["orderId"])
    assert (caught.value.code, caught.value.status) == (-2011, 400)
    assert not caught.value.execution_unknown


def test_cancel_losing_the_race_to_a_fill_is_unknown_order_and_the_order_is_filled(gateway, exchange, account):
    order = place_resting(gateway, client_order_id="t-race")
    exchange.control.arm_cancel_race(account["api_key"], SYMBOL, order_id=order["orderId"])
    with pytest.raises(UnknownOrder):
        gateway.cancel_order(SYMBOL, client_order_id="t-race")
    assert gateway.get_order(SYMBOL, order["orderId"])["status"] == "FILLED"


def test_one_account_cannot_see_another_accounts_order(exchange, gateway):
    other = make_gateway(exchange, exchange.control.create_account())
    theirs = other.place_order(SYMBOL, "BUY", QTY, price=PRICE, client_order_id="same-id")

    assert gateway.get_order(SYMBOL, theirs["orderId"]) is None
    assert gateway.get_order_by_client_order_id(SYMBOL, "same-id") is None
    with pytest.raises(UnknownOrder):
        gateway.cancel_order(SYMBOL, order_id=theirs["orderId"])
    assert other.get_order(SYMBOL, theirs["orderId"])["status"] == "NEW"

    # The same client order id in our account is ours, not theirs.
    ours = place_resting(gateway, client_order_id="same-id")
    assert gateway.get_order_by_client_order_id(SYMBOL, "same-id")["orderId"] == ours["orderId"]
    assert ours["orderId"] != theirs["orderId"]


def test_any_other_rejection_is_exchange_error_with_code_and_message(gateway):
    with pytest.raises(ExchangeError) as caught:
        gateway.place_order(SYMBOL, "SIDEWAYS", QTY, price=PRICE)
    error = caught.value
    assert type(error) is ExchangeError
    assert (error.code, error.status, error.message) == (-1117, 400, "Invalid side.")
    assert error.endpoint == "POST /fapi/v1/order"
    assert not isinstance(error, TRANSIENT_ERRORS)


# --------------------------------------------------------------------------- rate limits


def test_429_is_rate_limited_with_retry_after_from_the_header(gateway, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "429", method="GET")
    with pytest.raises(RateLimited) as caught:
        gateway.get_order(SYMBOL, 1)
    error = caught.value
    assert (error.status, error.code, error.banned) == (429, -1003, False)
    assert 1 <= error.retry_after <= 60  # the sandbox sends the seconds left in the current minute
    assert error.retry_after == int(error.retry_after)
    assert isinstance(error, TRANSIENT_ERRORS)


def test_418_is_rate_limited_banned(gateway, exchange):
    exchange.control.inject_fault("/fapi/v1/openOrders", "418")
    with pytest.raises(RateLimited) as caught:
        gateway.get_open_orders(SYMBOL)
    assert (caught.value.status, caught.value.banned, caught.value.retry_after) == (418, True, 120)


def test_past_binances_limit_a_429_stops_every_gateway_on_the_ip_without_sending(gateway, exchange, account, settings):
    settings.BINANCE_WEIGHT_LIMIT = 100_000  # our budget believes there is room; Binance (limit 11) disagrees
    exchange.control.set_weight_limit(11)
    gateway.get_all_orders(SYMBOL)  # weight 5, after GET /fapi/v1/time (1): the first signed call syncs the clock
    gateway.get_all_orders(SYMBOL)  # 11: at the limit, still served
    with pytest.raises(RateLimited) as caught:
        gateway.get_all_orders(SYMBOL)
    assert caught.value.status == 429 and not caught.value.banned
    assert 0 < caught.value.retry_after <= 60
    sent = exchange.control.stats()["total_requests"]
    with make_gateway(exchange, exchange.control.create_account()) as other:  # another account on the same IP
        for call in (gateway.get_open_orders, other.get_open_orders, other.get_positions):
            with pytest.raises(RateLimited) as caught:
                call(*([SYMBOL] if call != other.get_positions else []))
            assert caught.value.status is None and 0 < caught.value.retry_after <= 60  # refused here, not sent
        assert exchange.control.stats()["total_requests"] == sent
        other.place_order(SYMBOL, "BUY", QTY, price=PRICE)  # weight 0 on the IP: Binance serves it after a 429
    assert exchange.control.stats()["statuses"].get("418", 0) == 0  # so Binance never had a reason to ban


def test_the_gateway_keeps_under_the_limit_exchange_info_publishes(gateway, exchange):
    EXCHANGE_LIMITS.reset()  # as in production: nothing assumed, learnt from Binance
    exchange.control.set_weight_limit(11)
    assert gateway.weight_limit() == 11  # learnt from GET /fapi/v1/exchangeInfo (rateLimits)
    gateway.get_all_orders(SYMBOL)  # 1 + 1 + 5 = 7 of reconcile's 80 %: 8
    with pytest.raises(RateLimited) as caught:
        gateway.get_all_orders(SYMBOL)  # would make 12: refused before sending
    assert caught.value.status is None and not caught.value.banned
    placed = gateway.place_order(SYMBOL, "BUY", QTY, price=PRICE)  # weight 0 on the IP
    gateway.get_open_orders(SYMBOL)  # 8: reconcile's share is used up
    with pytest.raises(RateLimited):
        gateway.get_open_orders(SYMBOL)
    gateway.cancel_order(SYMBOL, order_id=placed["orderId"])  # 9: cancels may use the whole budget
    assert exchange.control.stats()["statuses"].get("429", 0) == 0


def test_used_weight_comes_from_the_response_header(gateway, exchange, account):
    assert gateway.used_weight == 0
    gateway.get_open_orders(SYMBOL)  # weight 1
    first = gateway.used_weight
    gateway.get_all_orders(SYMBOL)  # weight 5
    second = gateway.used_weight
    assert first >= 1
    assert second == first + 5 or second == 5  # (or a new minute began in between)
    assert second == exchange.control.stats()["used_weight_1m"]["127.0.0.1"] or second == 5  # per IP
    assert gateway.http_calls == 3  # GET /fapi/v1/time first: the process's first signed call syncs the clock


# --------------------------------------------------------------------------- the exchange is not answering


def test_500_is_exchange_unavailable_and_python_binance_does_not_retry(gateway, exchange):
    order = place_resting(gateway)
    exchange.control.reset_stats()
    exchange.control.inject_fault("/fapi/v1/order", "500", method="GET")
    with pytest.raises(ExchangeUnavailable) as caught:
        gateway.get_order(SYMBOL, order["orderId"])
    assert (caught.value.status, caught.value.code) == (500, -1000)
    assert not caught.value.execution_unknown  # a read: nothing to be unknown about
    assert requests_to(exchange, "GET /fapi/v1/order") == 1  # one request, no hidden retry
    assert gateway.get_order(SYMBOL, order["orderId"])["status"] == "NEW"


def test_502_html_page_is_exchange_unavailable_with_a_short_excerpt(gateway, exchange):
    exchange.control.inject_fault("/fapi/v1/openOrders", "502")
    with pytest.raises(ExchangeUnavailable) as caught:
        gateway.get_open_orders(SYMBOL)
    error = caught.value
    assert (error.status, error.code) == (502, None)
    assert error.message == "502 Bad Gateway"
    assert "<" not in str(error)


def test_503_service_unavailable_on_placement_is_a_plain_failure(gateway, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "503", method="POST")
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway, client_order_id="t-503")
    assert caught.value.status == 503
    assert caught.value.execution_unknown is False  # Binance: "Service Unavailable." = not executed
    assert gateway.get_order_by_client_order_id(SYMBOL, "t-503") is None


@pytest.mark.parametrize("client_order_id", ["t-unknown", None])
def test_503_unknown_error_on_placement_is_execution_unknown_and_the_order_exists(gateway, exchange, client_order_id):
    exchange.control.inject_fault("/fapi/v1/order", "503_unknown_placed", method="POST")
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway, client_order_id=client_order_id)
    error = caught.value
    assert error.status == 503 and error.execution_unknown is True
    assert error.message.startswith("Unknown error")
    assert error.client_order_id == (client_order_id or error.client_order_id)
    assert error.client_order_id  # always something to reconcile by
    order = gateway.get_order_by_client_order_id(SYMBOL, error.client_order_id)
    assert order is not None and order["status"] == "NEW"  # it went through: pending, not failed


def test_500_on_placement_counts_as_execution_unknown(gateway, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "500", method="POST")
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway, client_order_id="t-500-post")
    assert caught.value.execution_unknown is True


def test_a_hanging_read_times_out_within_the_timeout(exchange, account):
    gateway = make_gateway(exchange, account, timeout=0.5)
    exchange.control.inject_fault("/fapi/v1/openOrders", "hang", hang_sec=5)
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailable) as caught:
        gateway.get_open_orders(SYMBOL)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0  # the hang is 5 s
    assert caught.value.status is None and not caught.value.execution_unknown
    assert "no answer within 0.5s" in caught.value.message
    assert gateway.get_all_orders(SYMBOL) == []  # the session is still usable


def test_a_hanging_placement_is_execution_unknown_and_the_order_appears(exchange, account):
    gateway = make_gateway(exchange, account, timeout=0.3)
    exchange.control.inject_fault("/fapi/v1/order", "hang", method="POST", hang_sec=1.0)
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway, client_order_id="t-hang")
    assert caught.value.execution_unknown is True
    assert caught.value.client_order_id == "t-hang"
    order = wait_for(lambda: gateway.get_order_by_client_order_id(SYMBOL, "t-hang"))
    assert order["status"] == "NEW"


def test_connection_refused_is_exchange_unavailable_and_certainly_not_executed(account):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = BinanceFuturesClient(
        account["api_key"], account["api_secret"], rest_url=f"http://127.0.0.1:{port}", timeout=1
    )
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway, client_order_id="t-refused")
    assert caught.value.execution_unknown is False
    assert caught.value.message.startswith("could not connect to 127.0.0.1")
    assert "signature" not in str(caught.value)


def test_clock_skew_is_resynced_and_retried_once(gateway, exchange, account):
    assert gateway.get_open_orders(SYMBOL) == []  # the first signed call synced the clock first
    assert requests_to(exchange, "GET /fapi/v1/time") == 1
    exchange.control.set_clock_offset(120_000)  # the exchange's clock two minutes ahead: our stamps are too old
    exchange.control.reset_stats()
    assert gateway.get_open_orders(SYMBOL) == []  # -1021, GET /fapi/v1/time, the same request again
    assert exchange.control.stats()["requests"] == {"GET /fapi/v1/openOrders": 2, "GET /fapi/v1/time": 1}
    assert exchange.control.stats()["statuses"] == {"400": 1, "200": 2}
    assert 115_000 < EXCHANGE_CLOCK.offset_ms(gateway.rest_url) < 125_000
    other = make_gateway(exchange, account)  # another gateway of this process uses the offset: no sync, no -1021
    assert other.get_open_orders(SYMBOL) == [] and other.http_calls == 1


def test_a_fresh_gateway_on_a_drifting_host_syncs_before_its_first_signed_call(exchange, account):
    """Each task builds its own gateway: it must not start at offset zero and fail its first (only) call."""
    exchange.control.set_clock_offset(-2_000)  # this host 2 s ahead of the exchange: > 1000 ms ahead is refused
    gateway = make_gateway(exchange, account)
    order = place_resting(gateway, client_order_id="t-drift")
    assert order["status"] == "NEW"
    assert exchange.control.stats()["requests"] == {"GET /fapi/v1/time": 1, "POST /fapi/v1/order": 1}


def test_a_placement_refused_with_1021_is_sent_again_once(gateway, exchange, account):
    """-1021 means "not executed" (Binance's error codes: INVALID_TIMESTAMP), so resending cannot double the order."""
    gateway.get_open_orders(SYMBOL)
    exchange.control.set_clock_offset(-3_000)
    place_resting(gateway, client_order_id="t-resent")
    assert requests_to(exchange, "POST /fapi/v1/order") == 2
    assert [o["clientOrderId"] for o in gateway.get_open_orders(SYMBOL)] == ["t-resent"]  # one order


def test_a_second_1021_surfaces_as_clock_skew(gateway, exchange, monkeypatch):
    gateway.get_open_orders(SYMBOL)
    exchange.control.set_clock_offset(120_000)
    monkeypatch.setattr(gateway, "sync_time", lambda: 0)  # an exchange whose time endpoint does not help
    with pytest.raises(ClockSkew) as caught:
        gateway.get_open_orders(SYMBOL)
    assert caught.value.code == -1021 and requests_to(exchange, "GET /fapi/v1/openOrders") == 3


def test_the_shared_clock_is_refreshed_after_its_interval(gateway, exchange, monkeypatch):
    gateway.get_open_orders(SYMBOL)
    gateway.get_open_orders(SYMBOL)
    assert requests_to(exchange, "GET /fapi/v1/time") == 1
    monkeypatch.setattr(EXCHANGE_CLOCK, "interval_sec", 0.0)
    gateway.get_open_orders(SYMBOL)
    assert requests_to(exchange, "GET /fapi/v1/time") == 2


# --------------------------------------------------------------------------- allOrders paging and windows


def test_get_all_orders_pages_past_1000(gateway, exchange, account):
    start = exchange.control.server_time() - 1000
    bulk = exchange.control.bulk_orders(account["api_key"], SYMBOL, 2345)
    exchange.control.reset_stats()

    orders = gateway.get_all_orders(SYMBOL, start_time=start)
    ids = [o["orderId"] for o in orders]
    assert len(ids) == 2345 == len(set(ids))
    assert ids == sorted(ids)
    assert (ids[0], ids[-1]) == (bulk["first_order_id"], bulk["last_order_id"])
    assert requests_to(exchange, "GET /fapi/v1/allOrders") == 3


def test_get_all_orders_without_bounds_pages_through_the_last_7_days(gateway, exchange, account):
    exchange.control.bulk_orders(account["api_key"], SYMBOL, 1500)
    assert len(gateway.get_all_orders(SYMBOL)) == 1500
    few = make_gateway(exchange, exchange.control.create_account())
    few.place_order(SYMBOL, "BUY", QTY, price=PRICE)
    exchange.control.reset_stats()
    assert len(few.get_all_orders(SYMBOL)) == 1
    assert requests_to(exchange, "GET /fapi/v1/allOrders") == 1  # the common case: one call, weight 5


def test_get_all_orders_splits_spans_longer_than_7_days(gateway, exchange, account):
    t0 = exchange.control.server_time()
    exchange.control.bulk_orders(account["api_key"], SYMBOL, 3, client_order_id_prefix="old-")
    exchange.control.advance_clock(8 * DAY_MS)
    exchange.control.bulk_orders(account["api_key"], SYMBOL, 2, client_order_id_prefix="new-")
    end = exchange.control.server_time()
    exchange.control.reset_stats()

    orders = gateway.get_all_orders(SYMBOL, start_time=t0 - 1000, end_time=end)
    assert [o["clientOrderId"][:4] for o in orders] == ["old-"] * 3 + ["new-"] * 2
    assert requests_to(exchange, "GET /fapi/v1/allOrders") == 2
    assert exchange.control.stats()["statuses"] == {"200": 3}  # GET time + 2 pages; no window refused (-4165)

    # Three weeks: three windows, none of 7 days or more, consecutive.
    windows = gateway._all_orders_windows(0, 21 * DAY_MS)
    assert len(windows) == 4 and windows[-1] == (3 * (ALL_ORDERS_MAX_WINDOW_MS + 1), 21 * DAY_MS)
    assert all(end - start < 7 * DAY_MS for start, end in windows)
    assert all(b[0] == a[1] + 1 for a, b in pairwise(windows))


# --------------------------------------------------------------------------- listenKey


def test_listen_key_life_cycle_and_expiry(gateway, exchange, account):
    key = gateway.create_listen_key()
    assert isinstance(key, str) and key
    assert gateway.create_listen_key() == key  # Binance hands back the live key
    gateway.keepalive_listen_key(key)
    assert not hasattr(gateway, "close_listen_key")  # never DELETE: it would close the bot's own stream too
    exchange.control.advance_clock(60 * 60 * 1000 + 1)  # left alone, the key lapses
    with pytest.raises(ListenKeyExpired) as caught:
        gateway.keepalive_listen_key(key)
    assert caught.value.code == -1125

    key = gateway.create_listen_key()
    exchange.control.expire_listen_key(account["api_key"])
    with pytest.raises(ListenKeyExpired):
        gateway.keepalive_listen_key(key)
    assert gateway.create_listen_key() != key


# --------------------------------------------------------------------------- construction and secrets


def test_for_account_reads_urls_timeout_and_recv_window_from_settings(exchange, account, settings):
    settings.BINANCE_FUTURES_REST_URL = exchange.rest_url
    settings.BINANCE_FUTURES_TESTNET_REST_URL = "http://127.0.0.1:9"
    settings.BINANCE_HTTP_TIMEOUT = 2.5
    settings.BINANCE_RECV_WINDOW = 7000
    acct = SimpleNamespace(pk=7, name="alpha", use_testnet=False, **account)
    gateway = BinanceFuturesClient.for_account(acct)
    assert (gateway.rest_url, gateway.timeout, gateway.recv_window) == (exchange.rest_url, 2.5, 7000)
    assert gateway.account_label == "alpha#7"
    assert gateway.get_open_orders() == []

    settings.BINANCE_FUTURES_REST_URL = "http://127.0.0.1:9"
    settings.BINANCE_FUTURES_TESTNET_REST_URL = exchange.rest_url + "/"
    acct.use_testnet = True
    assert BinanceFuturesClient.for_account(acct).get_open_orders() == []


def test_for_account_takes_the_account_model(exchange, account, settings):
    from trades.models import Account

    settings.BINANCE_FUTURES_REST_URL = exchange.rest_url
    model = Account(name="beta", api_key=account["api_key"], api_secret=account["api_secret"])  # unsaved
    assert BinanceFuturesClient.for_account(model).get_positions() == []


def test_keys_never_appear_in_logs_exceptions_or_reprs(exchange, caplog):
    secret_account = exchange.control.create_account(api_key="K" * 24 + "apikeyMARK", api_secret="S" * 24 + "secMARK")
    api_key = secret_account["api_key"]  # the secret is looked for by its mark, secMARK
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "binance", "trades"):
        caplog.set_level(logging.DEBUG, logger=name)
    gateway = make_gateway(exchange, secret_account, timeout=0.3)
    control = exchange.control
    errors: list[BaseException] = []

    def attempt(call, *args, **kwargs):
        try:
            call(*args, **kwargs)
        except ExchangeError as exc:
            errors.append(exc)

    order = place_resting(gateway, client_order_id="t-secret")
    attempt(gateway.get_order, SYMBOL, order["orderId"])
    attempt(gateway.cancel_order, SYMBOL, order_id=12345)  # -2011
    control.inject_fault("/fapi/v1/order", "429", method="GET")
    attempt(gateway.get_order, SYMBOL, 1)
    shared_budget().clear()  # the 429 holds every call on this IP until Retry-After; this test moves on at once
    control.inject_fault("/fapi/v1/openOrders", "502")
    attempt(gateway.get_open_orders)
    control.inject_fault("/fapi/v1/order", "503_unknown_placed", method="POST")
    attempt(place_resting, gateway)
    control.inject_fault("/fapi/v1/allOrders", "hang", hang_sec=2)
    attempt(gateway.get_all_orders, SYMBOL)
    attempt(gateway.keepalive_listen_key, "nope")
    attempt(gateway.place_order, SYMBOL, "SIDEWAYS", QTY, price=PRICE)
    control.set_clock_offset(120_000)
    gateway.sync_time = lambda: 0  # no re-sync helps: the -1021 surfaces
    attempt(gateway.get_open_orders, SYMBOL)
    control.set_clock_offset(0)
    wrong_secret = BinanceFuturesClient(api_key, "wrong-secret-value", rest_url=exchange.rest_url)
    attempt(wrong_secret.get_open_orders)  # -1022 signature invalid

    assert [type(e) for e in errors] == [
        UnknownOrder,
        RateLimited,
        ExchangeUnavailable,
        ExchangeUnavailable,
        ExchangeUnavailable,
        ListenKeyExpired,
        ExchangeError,
        ClockSkew,
        ExchangeError,
    ]
    texts = [caplog.text, repr(gateway), repr(wrong_secret)]
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        assert error.__cause__ is None and error.__suppress_context__
        assert not hasattr(error, "response") and not hasattr(error, "request")
    assert caplog.records, "expected debug logging of the calls"
    for text in texts:
        assert "apikeyMARK" not in text and "secMARK" not in text and "wrong-secret-value" not in text


def test_exceptions_survive_pickle_and_celery_style_reconstruction(gateway, exchange):
    exchange.control.inject_fault("/fapi/v1/order", "429", method="GET")
    with pytest.raises(RateLimited) as caught:
        gateway.get_order(SYMBOL, 1)
    clone = pickle.loads(pickle.dumps(caught.value))
    assert (clone.code, clone.status, clone.retry_after, clone.endpoint) == (
        -1003,
        429,
        caught.value.retry_after,
        "GET /fapi/v1/order",
    )
    rebuilt = type(caught.value)(*caught.value.args)  # what Celery's JSON result backend does
    assert (rebuilt.code, rebuilt.message, rebuilt.status) == (
        caught.value.code,
        caught.value.message,
        caught.value.status,
    )
    assert str(OrderNotFound(-2013, "Order does not exist.", 400)) == "Order does not exist. (code=-2013, status=400)"


# --------------------------------------------------------------------------- answers the sandbox never gives
# A throwaway HTTP server that answers every request with one canned response: what a proxy, a load balancer or a
# misbehaving edge may send. Still the real path: python-binance → requests → a socket.


@pytest.fixture
def canned():
    """Yields set(status, body, headers) and the server's base URL."""
    answer = {"status": 200, "body": b"{}", "headers": {}}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(answer["status"])
            for name, value in answer["headers"].items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # do not wait on the client's idle keep-alive connection at shutdown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def set_answer(status, body, headers=None):
        answer.update(status=status, body=body.encode() if isinstance(body, str) else body, headers=headers or {})

    yield set_answer, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def canned_gateway(canned):
    set_answer, url = canned
    with BinanceFuturesClient("k" * 64, "s" * 64, rest_url=url, timeout=2, budget=NoBudget()) as gateway:
        yield set_answer, gateway


def test_odd_bodies_are_mapped_cleanly(canned_gateway):
    set_answer, gateway = canned_gateway

    set_answer(200, "<html><body>captive portal</body></html>", {"Content-Type": "text/html"})
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway)
    assert caught.value.execution_unknown and caught.value.message == "unusable response body: captive portal"

    set_answer(400, '"just a string"', {"Content-Type": "application/json"})  # python-binance chokes on this
    with pytest.raises(ExchangeError) as caught:
        gateway.get_open_orders()
    assert (type(caught.value), caught.value.status, caught.value.code) == (ExchangeError, 400, None)

    set_answer(504, "")
    with pytest.raises(ExchangeUnavailable) as caught:
        gateway.cancel_order(SYMBOL, order_id=1)
    assert caught.value.message == "HTTP 504 with an empty body" and caught.value.execution_unknown

    set_answer(404, "<html>Not Found</html>")
    with pytest.raises(ListenKeyExpired):
        gateway.keepalive_listen_key("gone")
    with pytest.raises(ExchangeError) as caught:
        gateway.get_order(SYMBOL, 1)
    assert (caught.value.status, caught.value.message) == (404, "Not Found")

    set_answer(400, '{"code": -1007, "msg": "Timeout waiting for response from backend server."}')
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway)
    assert caught.value.execution_unknown


def test_retry_after_without_a_seconds_header(canned_gateway):
    set_answer, gateway = canned_gateway
    set_answer(429, '{"code": -1003, "msg": "Too many requests."}')
    with pytest.raises(RateLimited) as caught:
        gateway.get_open_orders()
    assert caught.value.retry_after == 60  # documented default: one weight window

    set_answer(418, '{"code": -1003, "msg": "Way too much request weight used."}')
    with pytest.raises(RateLimited) as caught:
        gateway.get_open_orders()
    assert caught.value.retry_after == 120 and caught.value.banned  # documented default: the shortest ban

    until = int(time.time() * 1000) + 300_000
    set_answer(418, f'{{"code": -1003, "msg": "Way too much request weight used; IP banned until {until}."}}')
    with pytest.raises(RateLimited) as caught:
        gateway.get_open_orders()
    assert 290 <= caught.value.retry_after <= 300

    when = email.utils.formatdate(time.time() + 90, usegmt=True)
    set_answer(429, '{"code": -1003, "msg": "Too many requests."}', {"Retry-After": when})
    with pytest.raises(RateLimited) as caught:
        gateway.get_open_orders()
    assert 85 <= caught.value.retry_after <= 90


# --------------------------------------------------------------------------- HTTP 408


@pytest.mark.parametrize(
    "body",
    [
        b'{"code": -1007, "msg": "Timeout waiting for response from backend server."}',
        b'{"code": -2013, "msg": "Order does not exist."}',
        b'{"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}',
        b'{"code": -1111, "msg": "Precision is over the maximum defined for this asset."}',
        b"<html>Request Timeout</html>",
        b"",
    ],
)
def test_408_is_outcome_unknown_for_order_changes_whatever_its_body_says(body):
    import requests
    from requests.structures import CaseInsensitiveDict

    from trades.exceptions import error_from_response

    response = requests.Response()
    response.status_code, response._content, response.headers = 408, body, CaseInsensitiveDict()
    for method, unknown in (("post", True), ("delete", True), ("get", False)):
        error = error_from_response(response, method=method, endpoint=f"{method.upper()} /fapi/v1/order")
        assert type(error) is ExchangeUnavailable and error.status == 408
        assert error.execution_unknown is unknown


@pytest.mark.parametrize("kind", ["408", "408_placed"])
def test_408_on_placement_through_the_gateway(gateway, exchange, account, kind):
    exchange.control.inject_fault("/fapi/v1/order", kind, method="POST")
    with pytest.raises(ExchangeUnavailable) as caught:
        place_resting(gateway, client_order_id="t-408")
    assert caught.value.execution_unknown and caught.value.client_order_id == "t-408"
    found = gateway.get_order_by_client_order_id(SYMBOL, "t-408")
    assert (found is not None) is (kind == "408_placed")
