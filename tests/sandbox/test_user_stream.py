"""The user-data WebSocket, read with the `websockets` library."""
from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.helpers import wait_for

from .helpers import limit_buy

ORDER_KEYS = set("s c S o f q p ap sp x X i l z L N n T t b a m R wt ot ps cp rp pP si ss V pm gtd".split())


def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def recv_until(ws, predicate, timeout: float = 5.0) -> dict:
    while True:
        event = recv_json(ws, timeout)
        if predicate(event):
            return event


def stream(exchange, key: str, legacy: bool = False):
    url = f"{exchange.ws_url}/ws/{key}" if legacy else f"{exchange.ws_url}/private/ws?listenKey={key}"
    return connect(url, open_timeout=5, close_timeout=2)


def connected(exchange, api_key: str, n: int = 1):
    return wait_for(lambda: exchange.control.listen_keys(api_key)["connections"] == n)


@pytest.mark.parametrize("legacy", [False, True])
def test_order_trade_update_and_account_update_on_fill(futures_client, exchange, account, legacy):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key, legacy) as ws:
        connected(exchange, account["api_key"])
        order = limit_buy(futures_client, qty="0.010", price="50000", newClientOrderId="ws-1")
        new = recv_json(ws)
        assert new["e"] == "ORDER_TRADE_UPDATE" and set(new) == {"e", "E", "T", "o"}
        assert set(new["o"]) == ORDER_KEYS
        assert (new["o"]["x"], new["o"]["X"], new["o"]["i"], new["o"]["c"]) == ("NEW", "NEW", order["orderId"], "ws-1")
        exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=order["orderId"], qty="0.004")
        update = recv_json(ws)
        assert update["e"] == "ACCOUNT_UPDATE"
        [pos] = update["a"]["P"]
        assert (pos["s"], pos["pa"], pos["ep"], pos["ps"]) == ("BTCUSDT", "0.004", "50000.00000", "BOTH")
        assert set(pos) == {"s", "pa", "ep", "bep", "cp", "up", "mt", "iw", "ps"}
        assert set(update["a"]["B"][0]) == {"a", "wb", "cw", "bc"}
        trade = recv_json(ws)["o"]
        assert (trade["x"], trade["X"], trade["l"], trade["z"], trade["L"]) == (
            "TRADE", "PARTIALLY_FILLED", "0.004", "0.004", "50000.00")
        assert trade["t"] > 0 and trade["m"] is True
        exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=order["orderId"])
        final = recv_until(ws, lambda e: e["e"] == "ORDER_TRADE_UPDATE")["o"]
        assert (final["X"], final["z"], final["ap"]) == ("FILLED", "0.010", "50000.00000")


def test_cancel_and_expire_events(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        first, second = limit_buy(futures_client), limit_buy(futures_client)
        futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=first["orderId"])
        exchange.control.expire_order(account["api_key"], "BTCUSDT", order_id=second["orderId"])
        events = [recv_json(ws)["o"] for _ in range(4)]
        assert [(e["i"], e["x"], e["X"]) for e in events[2:]] == [
            (first["orderId"], "CANCELED", "CANCELED"), (second["orderId"], "EXPIRED", "EXPIRED")]


def test_unknown_listen_key_is_refused(exchange):
    with pytest.raises(InvalidStatus):
        with stream(exchange, "no-such-key"):
            pass


def test_drop_cuts_the_connection(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        assert exchange.control.drop_connections(account["api_key"]) == {"dropped": 1}
        with pytest.raises(ConnectionClosed):
            recv_json(ws)
    connected(exchange, account["api_key"], 0)
    with stream(exchange, key) as ws:           # the key itself is still valid: reconnecting works
        connected(exchange, account["api_key"])


def test_expiry_by_clock_sends_listen_key_expired_and_closes(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        exchange.control.advance_clock(60 * 60 * 1000 + 1)
        event = recv_json(ws)
        assert event["e"] == "listenKeyExpired" and event["listenKey"] == key and event["E"] > 0
        with pytest.raises(ConnectionClosed):
            recv_json(ws)
    with pytest.raises(InvalidStatus):
        with stream(exchange, key):
            pass
    assert futures_client.futures_stream_get_listen_key() != key


def test_expire_listen_key_now(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        assert exchange.control.expire_listen_key(account["api_key"]) == {"expired": key}
        assert recv_json(ws)["e"] == "listenKeyExpired"
        with pytest.raises(ConnectionClosed):
            recv_json(ws)


def test_connection_closed_after_24_hours(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        for _ in range(24):                       # keep the key alive while a day passes
            exchange.control.advance_clock(60 * 60 * 1000 - 1000)
            futures_client.futures_stream_keepalive(key)
        exchange.control.advance_clock(24 * 1000 + 1)
        with pytest.raises(ConnectionClosed):
            recv_json(ws)


def test_paused_events_are_lost(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        exchange.control.pause_events(account["api_key"])
        lost = limit_buy(futures_client)
        exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=lost["orderId"])
        exchange.control.resume_events(account["api_key"])
        seen = limit_buy(futures_client)
        event = recv_json(ws)
        assert (event["o"]["i"], event["o"]["X"]) == (seen["orderId"], "NEW")
        assert futures_client.futures_get_order(symbol="BTCUSDT", orderId=lost["orderId"])["status"] == "FILLED"


def test_other_accounts_events_never_arrive(futures_client, exchange, account):
    from .helpers import binance_client
    other = binance_client(exchange, exchange.control.create_account())
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key) as ws:
        connected(exchange, account["api_key"])
        limit_buy(other)
        mine = limit_buy(futures_client)
        assert recv_json(ws)["o"]["i"] == mine["orderId"]
