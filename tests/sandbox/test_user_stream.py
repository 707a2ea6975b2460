"""The user-data WebSocket, read with the `websockets` library."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.helpers import wait_for

from .helpers import binance_client, limit_buy

ORDER_KEYS = set("s c S o f q p ap sp x X i l z L N n T t b a m R wt ot ps cp rp pP si ss V pm gtd".split())
ALL_EVENTS = (
    "ORDER_TRADE_UPDATE",
    "ACCOUNT_UPDATE",
    "listenKeyExpired",
    "TRADE_LITE",
    "ALGO_UPDATE",
    "ACCOUNT_CONFIG_UPDATE",
    "MARGIN_CALL",
)


def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def recv_until(ws, predicate, timeout: float = 5.0) -> dict:
    while True:
        event = recv_json(ws, timeout)
        if predicate(event):
            return event


def stream(exchange, key: str, events=ALL_EVENTS, path_form: bool = False):
    """A user-data socket subscribed to `events` (None: no `events` parameter at all)."""
    query = f"events={'/'.join(events)}" if events is not None else ""
    if path_form:
        url = f"{exchange.ws_url}/private/ws/{key}" + (f"?{query}" if query else "")
    else:
        url = f"{exchange.ws_url}/private/ws?listenKey={key}" + (f"&{query}" if query else "")
    return connect(url, open_timeout=5, close_timeout=2)


def without(*names):
    return tuple(name for name in ALL_EVENTS if name not in names)


def connected(exchange, api_key: str, n: int = 1):
    return wait_for(lambda: exchange.control.listen_keys(api_key)["connections"] == n)


@pytest.mark.parametrize("path_form", [False, True])
def test_order_trade_update_and_account_update_on_fill(futures_client, exchange, account, path_form):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key, without("TRADE_LITE"), path_form) as ws:
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
        assert set(pos) == {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps"}
        assert set(update["a"]["B"][0]) == {"a", "wb", "cw", "bc"}
        trade = recv_json(ws)["o"]
        assert (trade["x"], trade["X"], trade["l"], trade["z"], trade["L"]) == (
            "TRADE",
            "PARTIALLY_FILLED",
            "0.004",
            "0.004",
            "50000.00",
        )
        assert trade["t"] > 0 and trade["m"] is True
        exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=order["orderId"])
        final = recv_until(ws, lambda e: e["e"] == "ORDER_TRADE_UPDATE")["o"]
        assert (final["X"], final["z"], final["ap"]) == ("FILLED", "0.010", "50000.00000")


def test_cancel_and_expire_events(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key, ["ORDER_TRADE_UPDATE"]) as ws:
        connected(exchange, account["api_key"])
        first, second = limit_buy(futures_client), limit_buy(futures_client)
        futures_client.futures_cancel_order(symbol="BTCUSDT", orderId=first["orderId"])
        exchange.control.expire_order(account["api_key"], "BTCUSDT", order_id=second["orderId"])
        events = [recv_json(ws)["o"] for _ in range(4)]
        assert [(e["i"], e["x"], e["X"]) for e in events[2:]] == [
            (first["orderId"], "CANCELED", "CANCELED"),
            (second["orderId"], "EXPIRED", "EXPIRED"),
        ]


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
    with stream(exchange, key) as ws:  # the key itself is still valid: reconnecting works
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
        for _ in range(24):  # keep the key alive while a day passes
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


def test_without_events_the_socket_is_accepted_and_silent(futures_client, exchange, account):
    """Binance since 2026-04-23: /private/ws?listenKey=K alone connects and then delivers nothing."""
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key, events=None) as deaf, stream(exchange, key) as hearing:
        connected(exchange, account["api_key"], 2)
        assert exchange.control.listen_keys(account["api_key"])["subscriptions"] == [[], sorted(ALL_EVENTS)]
        order = limit_buy(futures_client)
        exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=order["orderId"])
        recv_until(hearing, lambda e: e["e"] == "ORDER_TRADE_UPDATE" and e["o"]["X"] == "FILLED")
        exchange.control.push_raw(account["api_key"], '{"e":"ORDER_TRADE_UPDATE","o":{}}')
        recv_until(hearing, lambda e: e["e"] == "ORDER_TRADE_UPDATE" and e["o"] == {})
        with pytest.raises(TimeoutError):  # everything above went out before the raw frame: nothing came
            deaf.recv(timeout=0.3)


def test_only_the_listed_event_types_arrive(futures_client, exchange, account):
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key, ["TRADE_LITE", "ORDER_TRADE_UPDATE"]) as ws:
        connected(exchange, account["api_key"])
        order = limit_buy(futures_client, newClientOrderId="lite-1")
        exchange.control.fill_order(account["api_key"], "BTCUSDT", order_id=order["orderId"], qty="0.004")
        exchange.control.set_leverage(account["api_key"], "BTCUSDT", 10)  # not subscribed: never arrives
        exchange.control.expire_listen_key(account["api_key"])  # nor listenKeyExpired
        received = []
        with pytest.raises(ConnectionClosed):
            while True:
                received.append(recv_json(ws))
    assert [e["e"] for e in received] == ["ORDER_TRADE_UPDATE", "TRADE_LITE", "ORDER_TRADE_UPDATE"]
    lite = received[1]
    assert set(lite) == {"e", "E", "T", "s", "q", "p", "m", "c", "S", "L", "l", "t", "i"}
    assert (lite["s"], lite["c"], lite["i"], lite["l"], lite["L"], lite["q"]) == (
        "BTCUSDT",
        "lite-1",
        order["orderId"],
        "0.004",
        "50000.00",
        "0.010",
    )
    assert lite["t"] == received[2]["o"]["t"] and lite["m"] is True


@pytest.mark.parametrize("algo_subscription", ["ALGO_ORDER_UPDATE", "ALGO_UPDATE"])
def test_account_config_margin_call_and_algo_events(futures_client, exchange, account, algo_subscription):
    """The Algo service's updates are subscribed by the docs' name (ALGO_ORDER_UPDATE) or by their frames' `e`
    (ALGO_UPDATE); either way they arrive as `"e": "ALGO_UPDATE"`."""
    key = futures_client.futures_stream_get_listen_key()
    with stream(exchange, key, ["ACCOUNT_CONFIG_UPDATE", "MARGIN_CALL", algo_subscription]) as ws:
        connected(exchange, account["api_key"])
        futures_client.futures_create_order(symbol="ETHUSDT", side="BUY", type="MARKET", quantity="0.100")
        exchange.control.set_leverage(account["api_key"], "ETHUSDT", 10)
        config = recv_json(ws)
        assert config["e"] == "ACCOUNT_CONFIG_UPDATE" and config["ac"] == {"s": "ETHUSDT", "l": 10}
        exchange.control.margin_call(account["api_key"])
        call = recv_json(ws)
        assert call["e"] == "MARGIN_CALL" and [(p["s"], p["pa"]) for p in call["p"]] == [("ETHUSDT", "0.100")]
        exchange.control.algo_order(account["api_key"], "ETHUSDT", quantity="0.100", trigger_price="2800")
        algo = recv_json(ws)
        assert algo["e"] == "ALGO_UPDATE" and (algo["o"]["s"], algo["o"]["X"], algo["o"]["tp"]) == (
            "ETHUSDT",
            "NEW",
            "2800.00",
        )


def test_the_retired_root_route_is_gone(futures_client, exchange):
    key = futures_client.futures_stream_get_listen_key()
    with pytest.raises(InvalidStatus) as refused:
        with connect(f"{exchange.ws_url}/ws/{key}", open_timeout=5):
            pass
    assert refused.value.response.status_code == 404


def test_one_listen_key_per_account_and_delete_closes_every_socket(futures_client, exchange, account):
    """The bot and tradeops share an API key, hence the listenKey: whoever DELETEs it cuts both."""
    bots = binance_client(exchange, account)
    key = futures_client.futures_stream_get_listen_key()
    assert bots.futures_stream_get_listen_key() == key
    with stream(exchange, key) as ours, stream(exchange, key) as theirs:
        connected(exchange, account["api_key"], 2)
        bots.futures_stream_close(key)
        for ws in (ours, theirs):
            with pytest.raises(ConnectionClosed):
                recv_json(ws)
    connected(exchange, account["api_key"], 0)
