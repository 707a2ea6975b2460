"""The conformance corpus: Binance's own shapes, pinned, checked against both the product and the sandbox.

`documents/*.json` hold one document per REST answer and per user-data event type the product reads, with Binance's
field names and value types as its documentation shows them (each names its page in `source`). Two kinds of test:

- the product's parsers accept every document (OrderSnapshot.parse, the stream's classify, the gateway over HTTP,
  the position and userTrades readers), so a change of ours that breaks on Binance's real shapes fails here;
- the sandbox emits the same keys with the same value types (string vs number vs bool; nested objects and list rows
  too), so the sandbox cannot drift from Binance either — and the two can never drift away from Binance together.

A document's `conditional` keys (dotted paths, list indices left out) are ones Binance sends only for some orders or
events (a trailing stop's activatePrice, a commission that is not always pushed): the sandbox may leave them out.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from websockets.sync.client import connect

from reconciliation.orders.snapshots import OrderSnapshot
from reconciliation.positions.exposure import exchange_positions
from reconciliation.stream import messages
from reconciliation.stream.connection import stream_url
from reconciliation.stream.events import DEFAULT_EVENTS
from tests.helpers import wait_for
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import OrderNotFound

DOCUMENTS = Path(__file__).parent / "documents"
REST = [
    "query_order",
    "open_orders",
    "all_orders",
    "new_order",
    "cancel_order",
    "position_risk_v3",
    "user_trades",
    "listen_key",
    "server_time",
    "error",
]
EVENTS = {  # document → what the stream's classify must make of it
    "order_trade_update": messages.ORDER,
    "account_update": messages.POSITIONS,
    "listen_key_expired": messages.EXPIRED,
    "trade_lite": messages.IGNORED,
    "account_config_update": messages.IGNORED,
    "margin_call": messages.IGNORED,
    "algo_update": messages.IGNORED,
}


def document(name: str) -> dict:
    return json.loads((DOCUMENTS / f"{name}.json").read_text())


def body(name: str):
    return document(name)["body"]


def kind(value) -> str:
    """A JSON value's type as Binance's docs distinguish them."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return {float: "float", str: "str", list: "list", dict: "object", type(None): "null"}[type(value)]


def differences(actual, expected, conditional: frozenset, path: str = "") -> list[str]:
    """How `actual` (the sandbox's) differs from `expected` (Binance's document) in keys and value types."""
    if kind(actual) != kind(expected):
        return [f"{path or 'body'}: {kind(actual)} where Binance has {kind(expected)}"]
    problems = []
    if isinstance(expected, dict):
        for key in expected.keys() - actual.keys():
            if f"{path}{key}" not in conditional:
                problems.append(f"{path}{key}: missing")
        for key in actual.keys() - expected.keys():
            problems.append(f"{path}{key}: not in Binance's shape")
        for key in expected.keys() & actual.keys():
            problems += differences(actual[key], expected[key], conditional, f"{path}{key}.")
    elif isinstance(expected, list) and expected:
        for item in actual:
            problems += differences(item, expected[0], conditional, path)
    return problems


def assert_conforms(actual, name: str) -> None:
    doc = document(name)
    conditional = frozenset(doc["conditional"])
    problems = differences(actual, doc["body"], conditional)
    assert not problems, f"{name} ({doc['source']}):\n  " + "\n  ".join(sorted(problems))


def test_every_document_names_its_source_and_is_covered():
    names = {path.stem for path in DOCUMENTS.glob("*.json")}
    assert names == set(REST) | set(EVENTS)
    for name in names:
        doc = document(name)
        assert doc["source"].startswith("https://developers.binance.com/docs/derivatives/"), name
        assert differences(doc["body"], doc["body"], frozenset()) == []
    # Every type we subscribe to has a document; ALGO_ORDER_UPDATE is the subscription name of the frames whose `e` is
    # ALGO_UPDATE (the docs page "Algo Order Update").
    subscribed = {"ALGO_UPDATE" if name == "ALGO_ORDER_UPDATE" else name for name in DEFAULT_EVENTS}
    assert set(EVENTS) and {body(name)["e"] for name in EVENTS} >= subscribed


# --- the product reads every document ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, status, avg_price",
    [
        ("query_order", "FILLED", Decimal("61250.40")),
        ("new_order", "NEW", None),  # no avgPrice since 2026-07
        ("cancel_order", "CANCELED", None),  # idem: the later look-up prices the fill (rules.PRICED)
    ],
)
def test_order_snapshot_parses_the_rest_answers(name, status, avg_price):
    snap = OrderSnapshot.parse(body(name))
    assert (snap.status, snap.avg_price) == (status, avg_price)
    assert snap.order_id == body(name)["orderId"] and snap.client_order_id == body(name)["clientOrderId"]
    assert snap.executed_qty == Decimal(body(name)["executedQty"]) and snap.update_time == body(name)["updateTime"]


@pytest.mark.parametrize("name", ["open_orders", "all_orders"])
def test_order_snapshot_parses_every_listed_order(name):
    for row in body(name):
        assert OrderSnapshot.parse(row).order_id == row["orderId"]


def test_order_snapshot_parses_the_order_event_whole_and_its_o():
    event = body("order_trade_update")
    whole, inner = OrderSnapshot.parse(event), OrderSnapshot.parse(event["o"])
    assert whole == inner
    assert (whole.status, whole.executed_qty, whole.avg_price, whole.order_id) == (
        "PARTIALLY_FILLED",
        Decimal("0.004"),
        Decimal("61250.40000"),
        8389765590123456,
    )


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_the_stream_classifies_every_event_without_a_warning(name, caplog):
    outcome = messages.classify(1, json.dumps(body(name)))
    assert outcome.kind == EVENTS[name]
    assert not caplog.records  # malformed and unknown frames are the ones that warn


def test_position_and_user_trade_readers_take_binances_rows(canned_binance):
    client = SimpleNamespace(get_positions=lambda: body("position_risk_v3"))
    assert exchange_positions(client) == {("ETHUSDT", "BOTH"): (Decimal("-0.500"), Decimal("3010.25"))}
    gateway, _ = canned_binance
    fills = gateway.get_user_trades_since("ETHUSDT", int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000))
    assert [f["id"] for f in fills] == sorted(row["id"] for row in body("user_trades"))
    # What the exit rule reads of each fill: Decimal strings, an int id and time, a side and a position side.
    qty = sum(Decimal(f["qty"]) for f in fills)
    notional = sum(Decimal(f["price"]) * Decimal(f["qty"]) for f in fills)
    pnl = sum(Decimal(f["realizedPnl"]) for f in fills)
    assert ((notional / qty).quantize(Decimal("1e-10")), pnl) == (Decimal("3004"), Decimal("-0.31250000"))
    assert all(f["side"] in ("BUY", "SELL") and f["positionSide"] in ("BOTH", "LONG", "SHORT") for f in fills)


@pytest.fixture
def canned_binance():
    """An HTTP server answering each path with its document, as Binance would: the gateway's real HTTP path."""
    answers = {
        ("GET", "/fapi/v1/time"): (200, body("server_time")),
        ("POST", "/fapi/v1/listenKey"): (200, body("listen_key")),
        ("PUT", "/fapi/v1/listenKey"): (200, body("listen_key")),
        ("POST", "/fapi/v1/order"): (200, body("new_order")),
        ("DELETE", "/fapi/v1/order"): (200, body("cancel_order")),
        ("GET", "/fapi/v1/openOrders"): (200, body("open_orders")),
        ("GET", "/fapi/v1/allOrders"): (200, body("all_orders")),
        ("GET", "/fapi/v3/positionRisk"): (200, body("position_risk_v3")),
        ("GET", "/fapi/v1/userTrades"): (200, body("user_trades")),
    }
    state = {"order": (200, body("query_order"))}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?", 1)[0]
            status, payload = (
                state["order"] if (self.command, path) == ("GET", "/fapi/v1/order") else answers[(self.command, path)]
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    gateway = BinanceFuturesClient(
        "conformance-key", "conformance-secret", rest_url=f"http://127.0.0.1:{server.server_address[1]}"
    )
    yield gateway, state
    gateway.close()
    server.shutdown()
    server.server_close()


def test_the_gateway_takes_every_rest_document(canned_binance):
    gateway, state = canned_binance
    assert isinstance(gateway.sync_time(), int)
    assert gateway.create_listen_key() == body("listen_key")["listenKey"]
    assert gateway.place_order("BTCUSDT", "BUY", "0.010", price="60000", client_order_id="tradeops-0c4e11") == body(
        "new_order"
    )
    assert gateway.cancel_order("BTCUSDT", client_order_id="tradeops-0c4e11") == body("cancel_order")
    assert gateway.get_order("BTCUSDT", 8389765590123456) == body("query_order")
    assert gateway.get_open_orders("ETHUSDT") == body("open_orders")
    assert gateway.get_all_orders("SOLUSDT") == body("all_orders")
    assert gateway.get_positions() == body("position_risk_v3")
    assert gateway.get_user_trades("ETHUSDT") == body("user_trades")
    state["order"] = (400, body("error"))
    assert gateway.get_order("BTCUSDT", 1) is None  # -2013: "does not exist"
    with pytest.raises(OrderNotFound):
        gateway._call("get", "order", {"symbol": "BTCUSDT", "orderId": 1})


# --- the sandbox emits Binance's shapes --------------------------------------------------------------------------


@pytest.fixture
def sandbox_gateway(exchange):
    account = exchange.control.create_account()
    gateway = BinanceFuturesClient(account["api_key"], account["api_secret"], rest_url=exchange.rest_url)
    yield gateway, account
    gateway.close()


def test_the_sandbox_answers_in_binances_shapes(exchange, sandbox_gateway):
    gateway, account = sandbox_gateway
    assert_conforms(requests.get(f"{exchange.rest_url}/fapi/v1/time", timeout=5).json(), "server_time")
    assert_conforms(
        requests.post(
            f"{exchange.rest_url}/fapi/v1/listenKey", timeout=5, headers={"X-MBX-APIKEY": account["api_key"]}
        ).json(),
        "listen_key",
    )
    placed = gateway.place_order("BTCUSDT", "BUY", "0.010", price="50000", client_order_id="conf-1")
    assert_conforms(placed, "new_order")
    assert_conforms(gateway.get_open_orders("BTCUSDT"), "open_orders")
    exchange.control.fill_order(account["api_key"], "BTCUSDT", client_order_id="conf-1", qty="0.004")
    assert_conforms(gateway.get_order("BTCUSDT", placed["orderId"]), "query_order")
    assert_conforms(gateway.cancel_order("BTCUSDT", client_order_id="conf-1"), "cancel_order")
    assert_conforms(gateway.get_all_orders("BTCUSDT"), "all_orders")
    assert_conforms(gateway.get_positions(), "position_risk_v3")
    assert_conforms(gateway.get_user_trades("BTCUSDT"), "user_trades")
    assert all(
        len(rows)
        for rows in (gateway.get_all_orders("BTCUSDT"), gateway.get_positions(), gateway.get_user_trades("BTCUSDT"))
    )  # no vacuous list comparisons
    with pytest.raises(OrderNotFound):
        gateway._call("get", "order", {"symbol": "BTCUSDT", "orderId": 1})
    assert_conforms(gateway._client.response.json(), "error")


def test_the_sandbox_streams_binances_event_shapes(exchange, sandbox_gateway):
    gateway, account = sandbox_gateway
    key, api_key, control = gateway.create_listen_key(), account["api_key"], exchange.control
    seen: dict[str, dict] = {}
    with connect(stream_url(exchange.ws_url, key, DEFAULT_EVENTS), open_timeout=5) as ws:
        wait_for(lambda: control.listen_keys(api_key)["connections"] == 1)
        gateway.place_order("ETHUSDT", "BUY", "0.500", price="2900", client_order_id="conf-ws")
        control.fill_order(api_key, "ETHUSDT", client_order_id="conf-ws", qty="0.200")
        control.set_leverage(api_key, "ETHUSDT", 10)
        control.margin_call(api_key)
        control.algo_order(api_key, "ETHUSDT", quantity="0.200", trigger_price="2800")
        control.expire_listen_key(api_key)
        while "listenKeyExpired" not in seen:
            event = json.loads(ws.recv(timeout=5))
            if event["e"] != "ORDER_TRADE_UPDATE" or event["o"]["x"] == "TRADE":  # the fill's, as in the document
                seen.setdefault(event["e"], event)
    assert set(seen) == {body(name)["e"] for name in EVENTS}
    for name in EVENTS:
        assert_conforms(seen[body(name)["e"]], name)
