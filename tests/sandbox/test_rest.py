"""The sandbox's REST face, exercised through python-binance's own Client over HTTP."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
import requests
from binance.exceptions import BinanceAPIException

from .helpers import binance_client, from_address, limit_buy, sync_clock

DAY_MS = 86_400_000
ORDER_FIELDS = {
    "orderId",
    "symbol",
    "status",
    "clientOrderId",
    "price",
    "avgPrice",
    "origQty",
    "executedQty",
    "cumQuote",
    "timeInForce",
    "type",
    "reduceOnly",
    "closePosition",
    "side",
    "positionSide",
    "stopPrice",
    "workingType",
    "priceProtect",
    "origType",
    "priceMatch",
    "selfTradePreventionMode",
    "goodTillDate",
    "time",
    "updateTime",
}
# POST and DELETE answers: no avgPrice / cumQuote (Binance 2026-07; connector 14.0.0) nor time, but cumQty.
ANSWER_FIELDS = ORDER_FIELDS - {"avgPrice", "cumQuote", "time"} | {"cumQty"}


def api_error(call, *args, **kwargs) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as info:
        call(*args, **kwargs)
    return info.value


def test_public_endpoints(futures_client):
    assert futures_client.futures_ping() == {}
    assert abs(futures_client.futures_time()["serverTime"] - time.time() * 1000) < 5000
    info = futures_client.futures_exchange_info()
    symbols = {s["symbol"]: s for s in info["symbols"]}
    assert {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"} <= set(symbols)
    filters = {f["filterType"] for f in symbols["BTCUSDT"]["filters"]}
    assert {"PRICE_FILTER", "LOT_SIZE", "MIN_NOTIONAL"} <= filters
    assert info["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 2400,
    }


def test_place_query_by_id_and_client_id_then_cancel(futures_client):
    placed = limit_buy(futures_client, newClientOrderId="bot-42")
    assert set(placed) == ANSWER_FIELDS
    assert placed["status"] == "NEW" and placed["clientOrderId"] == "bot-42"
    assert placed["price"] == "50000.00" and placed["origQty"] == "0.010" and placed["executedQty"] == "0"
    by_id = futures_client.futures_get_order(symbol="BTCUSDT", orderId=placed["orderId"])
    by_client_id = futures_client.futures_get_order(symbol="BTCUSDT", origClientOrderId="bot-42")
    assert by_id == by_client_id and set(by_id) == ORDER_FIELDS
    assert {k: v for k, v in by_id.items() if k in ANSWER_FIELDS} == {k: v for k, v in placed.items() if k != "cumQty"}
    assert (by_id["avgPrice"], by_id["cumQuote"]) == ("0.00000", "0")
    assert [o["orderId"] for o in futures_client.futures_get_open_orders(symbol="BTCUSDT")] == [placed["orderId"]]
    canceled = futures_client.futures_cancel_order(symbol="BTCUSDT", origClientOrderId="bot-42")
    assert canceled["status"] == "CANCELED" and canceled["orderId"] == placed["orderId"]
    assert set(canceled) == ANSWER_FIELDS
    assert futures_client.futures_get_open_orders() == []
    second = limit_buy(futures_client)
    assert second["orderId"] > placed["orderId"] and second["clientOrderId"] != "bot-42"


def test_unknown_order_query_is_2013_and_cancel_is_2011(futures_client, exchange, account):
    err = api_error(futures_client.futures_get_order, symbol="BTCUSDT", orderId=123)
    assert (err.status_code, err.code, err.message) == (400, -2013, "Order does not exist.")
    err = api_error(futures_client.futures_get_order, symbol="BTCUSDT", origClientOrderId="never-sent")
    assert err.code == -2013
    err = api_error(futures_client.futures_cancel_order, symbol="BTCUSDT", orderId=123)
    assert (err.status_code, err.code, err.message) == (400, -2011, "Unknown order sent.")
    filled = limit_buy(futures_client)
    exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=filled["orderId"])
    assert api_error(futures_client.futures_cancel_order, symbol="BTCUSDT", orderId=filled["orderId"]).code == -2011


def test_partial_fills_positions_and_user_trades(futures_client, exchange, account):
    order = limit_buy(futures_client, qty="0.010", price="50000")
    control, key = exchange.control, account["api_key"]
    control.fill_order(key, "BTCUSDT", order_id=order["orderId"], qty="0.004")
    part = futures_client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])
    assert (part["status"], part["executedQty"], part["avgPrice"]) == ("PARTIALLY_FILLED", "0.004", "50000.00000")
    control.fill_order(key, "BTCUSDT", order_id=order["orderId"], price="50100")
    done = futures_client.futures_get_order(symbol="BTCUSDT", orderId=order["orderId"])
    assert (done["status"], done["executedQty"]) == ("FILLED", "0.010")
    assert Decimal(done["avgPrice"]) == Decimal("50060")  # (0.004*50000 + 0.006*50100) / 0.010
    assert Decimal(done["cumQuote"]) == Decimal("500.6")
    [position] = futures_client.futures_position_information(symbol="BTCUSDT")
    assert position["positionSide"] == "BOTH"
    assert (Decimal(position["positionAmt"]), Decimal(position["entryPrice"])) == (Decimal("0.010"), Decimal("50060"))
    assert Decimal(position["unRealizedProfit"]) == (Decimal(60000) - Decimal(50060)) * Decimal("0.010")
    trades = futures_client.futures_account_trades(symbol="BTCUSDT")
    assert [(t["orderId"], t["qty"], t["price"]) for t in trades] == [
        (order["orderId"], "0.004", "50000.00"),
        (order["orderId"], "0.006", "50100.00"),
    ]
    assert trades[0]["id"] < trades[1]["id"] and trades[0]["maker"] is True and trades[0]["side"] == "BUY"
    # sell 0.004 at market (60000): realized pnl on the closed part, entry price unchanged
    sold = futures_client.futures_create_order(
        symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.004", newOrderRespType="RESULT"
    )
    assert sold["status"] == "FILLED" and sold["cumQty"] == "0.004" and "avgPrice" not in sold
    assert futures_client.futures_get_order(symbol="BTCUSDT", orderId=sold["orderId"])["avgPrice"] == "60000.00000"
    last = futures_client.futures_account_trades(symbol="BTCUSDT", fromId=trades[1]["id"] + 1)
    assert Decimal(last[0]["realizedPnl"]) == (Decimal(60000) - Decimal(50060)) * Decimal("0.004")
    [position] = futures_client.futures_position_information(symbol="BTCUSDT")
    assert (Decimal(position["positionAmt"]), Decimal(position["entryPrice"])) == (Decimal("0.006"), Decimal("50060"))
    v2 = futures_client.futures_position_information(symbol="BTCUSDT", version=2)
    assert v2[0]["positionAmt"] == "0.006" and v2[0]["marginType"] == "cross"


def test_a_fill_off_the_lot_step_is_refused_and_changes_nothing(futures_client, exchange, account):
    """Binance matches in whole lots (SOLUSDT: step 1). A control fill of 0.5 used to be taken: the position held
    0.5 while executedQty, positionAmt and the stream's quantities all rounded it to "0" — a position no answer
    could explain (the soak's SOLUSDT failure)."""
    from sandbox.control import SandboxControlError

    order = futures_client.futures_create_order(
        symbol="SOLUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="2", price="150"
    )
    control, key = exchange.control, account["api_key"]
    with pytest.raises(SandboxControlError) as info:
        control.fill_order(key, "SOLUSDT", order_id=order["orderId"], qty="0.5")
    assert "not a multiple of SOLUSDT's step 1" in str(info.value)
    assert futures_client.futures_get_order(symbol="SOLUSDT", orderId=order["orderId"])["executedQty"] == "0"
    assert futures_client.futures_position_information(symbol="SOLUSDT")[0]["positionAmt"] == "0"
    assert futures_client.futures_account_trades(symbol="SOLUSDT") == []
    control.fill_order(key, "SOLUSDT", order_id=order["orderId"], qty="1")
    part = futures_client.futures_get_order(symbol="SOLUSDT", orderId=order["orderId"])
    assert (part["status"], part["executedQty"]) == ("PARTIALLY_FILLED", "1")


def test_market_order_acks_new_then_is_filled(futures_client, exchange):
    exchange.control.set_price("ETHUSDT", "3100.50")
    ack = futures_client.futures_create_order(symbol="ETHUSDT", side="SELL", type="MARKET", quantity="0.100")
    assert (ack["status"], ack["executedQty"], ack["type"]) == ("NEW", "0", "MARKET")
    order = futures_client.futures_get_order(symbol="ETHUSDT", orderId=ack["orderId"])
    assert (order["status"], order["avgPrice"], order["executedQty"]) == ("FILLED", "3100.50000", "0.100")
    [position] = futures_client.futures_position_information(symbol="ETHUSDT")
    assert position["positionAmt"] == "-0.100"


def test_order_validation_errors(futures_client, account, exchange):
    cases = [
        (dict(symbol="NOPEUSDT", side="BUY", type="MARKET", quantity="1"), -1121),
        (
            dict(symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.010", price="50000.05", timeInForce="GTC"),
            -4014,
        ),
        (dict(symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.010", price="50000"), -1102),
        (dict(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.0001"), -1111),
        (dict(symbol="BTCUSDT", side="SIDEWAYS", type="MARKET", quantity="0.010"), -1117),
        (dict(symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.010", reduceOnly="true"), -2022),
        (dict(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010", newClientOrderId="bad id!"), -4015),
    ]
    for params, code in cases:
        assert api_error(futures_client.futures_create_order, **params).code == code, params


def test_duplicate_client_order_id_of_an_open_order_is_4116(futures_client, exchange, account):
    first = limit_buy(futures_client, newClientOrderId="dup-1")
    err = api_error(limit_buy, futures_client, newClientOrderId="dup-1")
    assert (err.status_code, err.code, err.message) == (400, -4116, "ClientOrderId is duplicated.")
    futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=first["orderId"])
    again = limit_buy(futures_client, newClientOrderId="dup-1")  # free again once the first one is final
    assert futures_client.futures_get_order(symbol="BTCUSDT", origClientOrderId="dup-1")["orderId"] == again["orderId"]


def test_wrong_key_wrong_signature_and_stale_timestamp(exchange, account):
    stranger = binance_client(exchange, {"api_key": "nobody", "api_secret": account["api_secret"]})
    err = api_error(stranger.futures_get_open_orders)
    assert (err.status_code, err.code, err.message) == (401, -2015, "Invalid API-key, IP, or permissions for action.")
    forger = binance_client(exchange, {"api_key": account["api_key"], "api_secret": "not-the-secret"})
    err = api_error(forger.futures_get_open_orders)
    assert (err.status_code, err.code, err.message) == (400, -1022, "Signature for this request is not valid.")
    late = binance_client(exchange, account)
    late.timestamp_offset = -30_000  # 30 s old, python-binance's recvWindow is 10 s
    err = api_error(late.futures_get_open_orders)
    assert (err.status_code, err.code) == (400, -1021)
    early = binance_client(exchange, account)
    early.timestamp_offset = 5_000
    assert api_error(early.futures_get_open_orders).code == -1021
    anonymous = requests.get(exchange.rest_url + "/fapi/v1/openOrders?timestamp=1&signature=x", timeout=5)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, -2014)


def test_weight_header_and_429_then_418(futures_client, exchange):
    futures_client.futures_get_open_orders(symbol="BTCUSDT")
    assert futures_client.response.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    futures_client.futures_get_open_orders()
    assert futures_client.response.headers["X-MBX-USED-WEIGHT-1M"] == "41"
    futures_client.futures_get_all_orders(symbol="BTCUSDT")
    assert futures_client.response.headers["X-MBX-USED-WEIGHT-1M"] == "46"
    exchange.control.set_weight_limit(51)
    futures_client.futures_position_information()  # 51: exactly at the limit, still served
    exchange_error = None
    statuses = []
    for _ in range(5):
        err = api_error(futures_client.futures_get_order, symbol="BTCUSDT", orderId=1)
        statuses.append(err.status_code)
        exchange_error = exchange_error or err
        assert 0 < int(err.response.headers["Retry-After"]) <= 120
    assert exchange_error.code == -1003
    assert statuses[:2] == [429, 429] and statuses[-1] == 418
    assert 0 < int(exchange_error.response.headers["Retry-After"]) <= 60


def test_weight_is_counted_per_ip_not_per_api_key(futures_client, exchange):
    other = from_address(binance_client(exchange, exchange.control.create_account()), "127.0.0.2")
    same_key_other_ip = from_address(binance_client(exchange, exchange.control.create_account()), "127.0.0.3")
    third = binance_client(exchange, exchange.control.create_account())  # another key on futures_client's IP
    futures_client.futures_get_open_orders()
    third.futures_get_open_orders(symbol="BTCUSDT")
    assert third.response.headers["X-MBX-USED-WEIGHT-1M"] == "41"  # one IP, two keys: one count
    other.futures_get_open_orders(symbol="BTCUSDT")
    assert other.response.headers["X-MBX-USED-WEIGHT-1M"] == "1"  # another IP starts at its own zero
    same_key_other_ip.futures_get_open_orders(symbol="BTCUSDT")
    assert same_key_other_ip.response.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    used = exchange.control.stats()["used_weight_1m"]
    assert used == {"127.0.0.1": 41, "127.0.0.2": 1, "127.0.0.3": 1}


def test_one_key_from_two_addresses_has_two_budgets(exchange, account):
    exchange.control.set_weight_limit(40, ip="127.0.0.2")
    near = from_address(binance_client(exchange, account), "127.0.0.2")
    far = from_address(binance_client(exchange, account), "127.0.0.3")
    near.futures_get_open_orders()  # 40: at 127.0.0.2's own limit
    assert api_error(near.futures_get_open_orders, symbol="BTCUSDT").status_code == 429
    far.futures_get_open_orders()  # the same key, another IP: served
    assert far.response.headers["X-MBX-USED-WEIGHT-1M"] == "40"
    info = requests.get(exchange.rest_url + "/fapi/v1/exchangeInfo", timeout=5).json()
    assert info["rateLimits"] == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ]
    exchange.control.set_weight_limit(7, ip="127.0.0.6")
    told = from_address(binance_client(exchange, account), "127.0.0.6").futures_exchange_info()
    assert told["rateLimits"][0]["limit"] == 7  # each IP is told its own limit


@pytest.mark.slow  # waits out a real (scaled) ban, twice
def test_bans_escalate_for_an_ip_that_keeps_going(exchange, account):
    exchange.control.set_weight_limit(0, ip="127.0.0.4")  # every request is over the limit
    exchange.control.set_ban_time_scale(0.01)  # 2 min → 1.2 s, 4 min → 2.4 s
    client = from_address(binance_client(exchange, account), "127.0.0.4")
    bystander = from_address(binance_client(exchange, account), "127.0.0.5")
    _not_near_the_end_of_a_minute(exchange)  # strikes are counted per minute
    answers = [api_error(client.futures_time) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 429, 429, 418]
    assert 0 < int(answers[0].response.headers["Retry-After"]) <= 60
    assert int(answers[3].response.headers["Retry-After"]) == 2  # ceil(1.2 s)
    assert api_error(client.futures_time).status_code == 418  # banned: even weight 1
    bystander.futures_time()  # the ban is the IP's only
    first_until = exchange.control.stats()["bans"]["127.0.0.4"]["banned_until"]
    deadline = time.monotonic() + 10
    while exchange.control.server_time() < first_until and time.monotonic() < deadline:
        time.sleep(0.05)
    _not_near_the_end_of_a_minute(exchange)
    answers = [api_error(client.futures_time) for _ in range(4)]  # keeps going: strikes again, a longer ban
    assert [a.status_code for a in answers] == [429, 429, 429, 418]
    assert int(answers[3].response.headers["Retry-After"]) == 3  # second ban: ceil(2.4 s)
    assert exchange.control.stats()["bans"]["127.0.0.4"]["bans"] == 2


def _not_near_the_end_of_a_minute(exchange) -> None:
    deadline = time.monotonic() + 15
    while exchange.control.server_time() % 60_000 > 50_000 and time.monotonic() < deadline:
        time.sleep(0.1)


def test_ban_length_ladder_is_binances_two_minutes_to_three_days():
    from sandbox.limits import ban_ms

    assert ban_ms(1) == 120_000 and ban_ms(2) == 240_000
    assert ban_ms(30) == 3 * 24 * 3600 * 1000
    assert ban_ms(1, 0.01) == 1200


def test_orders_are_limited_per_account_with_order_count_headers(exchange, account):
    client = binance_client(exchange, account)
    limit_buy(client)
    assert client.response.headers["X-MBX-ORDER-COUNT-10S"] == "1"
    assert client.response.headers["X-MBX-ORDER-COUNT-1M"] == "1"
    assert client.response.headers["X-MBX-USED-WEIGHT-1M"] == "0"  # a new order weighs 0 on the IP
    other = binance_client(exchange, exchange.control.create_account())
    limit_buy(other)
    assert other.response.headers["X-MBX-ORDER-COUNT-1M"] == "1"  # counted per account, not per IP


def test_archival_rule_after_three_days(futures_client, exchange, account):
    canceled = limit_buy(futures_client)
    futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=canceled["orderId"])
    partial = limit_buy(futures_client)
    exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=partial["orderId"], qty="0.001")
    futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=partial["orderId"])
    exchange.control.advance_clock(3 * DAY_MS + 1000)
    sync_clock(futures_client)
    assert api_error(futures_client.futures_get_order, symbol="BTCUSDT", orderId=canceled["orderId"]).code == -2013
    kept = futures_client.futures_get_order(symbol="BTCUSDT", orderId=partial["orderId"])
    assert (kept["status"], kept["executedQty"]) == ("CANCELED", "0.001")
    assert [o["orderId"] for o in futures_client.futures_get_all_orders(symbol="BTCUSDT")] == [partial["orderId"]]
    assert exchange.control.get_order(account["api_key"], "BTCUSDT", canceled["orderId"])["archived"] is True


def test_all_orders_paging_and_window(futures_client, exchange, account):
    exchange.control.bulk_orders(account["api_key"], "BTCUSDT", 12)
    ids = [o["orderId"] for o in futures_client.futures_get_all_orders(symbol="BTCUSDT")]
    assert len(ids) == 12 and ids == sorted(ids)
    page = futures_client.futures_get_all_orders(symbol="BTCUSDT", orderId=ids[3], limit=5)
    assert [o["orderId"] for o in page] == ids[3:8]
    assert [o["orderId"] for o in futures_client.futures_get_all_orders(symbol="BTCUSDT", limit=4)] == ids[-4:]
    now = exchange.control.server_time()
    window = futures_client.futures_get_all_orders(symbol="BTCUSDT", startTime=now - DAY_MS, endTime=now + 1000)
    assert len(window) == 12
    err = api_error(futures_client.futures_get_all_orders, symbol="BTCUSDT", startTime=now - 7 * DAY_MS, endTime=now)
    assert err.code == -4165
    assert futures_client.futures_get_all_orders(symbol="ETHUSDT") == []


def test_accounts_are_isolated(futures_client, exchange, account):
    other_account = exchange.control.create_account()
    other = binance_client(exchange, other_account)
    mine = limit_buy(futures_client, newClientOrderId="same-id")
    theirs = limit_buy(other, newClientOrderId="same-id")  # same clientOrderId in another account is fine
    assert mine["orderId"] != theirs["orderId"]
    assert api_error(other.futures_get_order, symbol="BTCUSDT", orderId=mine["orderId"]).code == -2013
    assert api_error(other.futures_cancel_order, symbol="BTCUSDT", orderId=mine["orderId"]).code == -2011
    assert other.futures_get_order(symbol="BTCUSDT", origClientOrderId="same-id")["orderId"] == theirs["orderId"]
    exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=mine["orderId"])
    assert [p["positionAmt"] for p in other.futures_position_information()] == ["0"]  # open order, no position
    assert futures_client.futures_position_information()[0]["positionAmt"] == "0.010"
    assert [o["orderId"] for o in other.futures_get_open_orders()] == [theirs["orderId"]]
    assert other.futures_account_trades(symbol="BTCUSDT") == []
    assert futures_client.futures_stream_get_listen_key() != other.futures_stream_get_listen_key()


def test_listen_key_create_keepalive_and_1125(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    assert len(key) == 64 and futures_client.futures_stream_get_listen_key() == key  # same key, extended
    assert futures_client.futures_stream_keepalive(key) == {"listenKey": key}
    exchange.control.advance_clock(59 * 60 * 1000)
    futures_client.futures_stream_keepalive(key)  # still alive, extended again
    exchange.control.advance_clock(59 * 60 * 1000)
    assert exchange.control.listen_keys(account["api_key"])["listen_key"] == key
    exchange.control.advance_clock(2 * 60 * 1000)  # 61 min since the keepalive
    err = api_error(futures_client.futures_stream_keepalive, key)
    assert (err.status_code, err.code, err.message) == (400, -1125, "This listenKey does not exist.")
    fresh = futures_client.futures_stream_get_listen_key()
    assert fresh != key
    assert futures_client.futures_stream_close(fresh) == {}
    assert api_error(futures_client.futures_stream_keepalive, fresh).code == -1125
