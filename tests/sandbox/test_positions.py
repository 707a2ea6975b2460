"""The sandbox's positions: hedge mode (positionSide/dual, LONG/SHORT rows, -4061) and lagging positionRisk reads."""

from __future__ import annotations

import pytest
from binance.exceptions import BinanceAPIException


def api_error(call, *args, **kwargs) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as info:
        call(*args, **kwargs)
    return info.value


def market(client, side, qty="0.010", **kwargs):
    return client.futures_create_order(symbol="BTCUSDT", side=side, type="MARKET", quantity=qty, **kwargs)


def rows(client):
    return {(r["symbol"], r["positionSide"]): r["positionAmt"] for r in client.futures_position_information()}


def test_one_way_by_default_and_position_side_must_match_the_mode(futures_client, exchange):
    assert futures_client.futures_get_position_mode() == {"dualSidePosition": False}
    assert api_error(market, futures_client, "BUY", positionSide="LONG").code == -4061
    market(futures_client, "BUY", positionSide="BOTH")
    market(futures_client, "SELL", qty="0.004")
    assert rows(futures_client) == {("BTCUSDT", "BOTH"): "0.006"}
    # The mode cannot change under a position (-4068), nor be "changed" to what it is (-4059).
    assert api_error(futures_client.futures_change_position_mode, dualSidePosition="false").code == -4059
    assert api_error(futures_client.futures_change_position_mode, dualSidePosition="true").code == -4068


def test_hedge_mode_long_and_short_rows_per_symbol(futures_client, exchange, account):
    futures_client.futures_change_position_mode(dualSidePosition="true")
    assert futures_client.futures_get_position_mode() == {"dualSidePosition": True}
    assert api_error(market, futures_client, "BUY").code == -4061  # missing
    assert api_error(market, futures_client, "BUY", positionSide="BOTH").code == -4061  # wrong
    assert api_error(market, futures_client, "BUY", positionSide="LONG", reduceOnly="true").code == -1106
    long = market(futures_client, "BUY", positionSide="LONG")
    market(futures_client, "SELL", positionSide="SHORT")
    assert long["positionSide"] == "LONG"
    assert rows(futures_client) == {("BTCUSDT", "LONG"): "0.010", ("BTCUSDT", "SHORT"): "-0.010"}
    # A close in hedge mode never exceeds its side.
    assert api_error(market, futures_client, "SELL", qty="0.020", positionSide="LONG").code == -2022
    market(futures_client, "SELL", qty="0.004", positionSide="LONG")
    assert rows(futures_client) == {("BTCUSDT", "LONG"): "0.006", ("BTCUSDT", "SHORT"): "-0.010"}
    fills = futures_client.futures_account_trades(symbol="BTCUSDT")
    assert [f["positionSide"] for f in fills] == ["LONG", "SHORT", "LONG"]
    control = {(p["symbol"], p["positionSide"]) for p in exchange.control.positions(account["api_key"])["positions"]}
    assert control == {("BTCUSDT", "LONG"), ("BTCUSDT", "SHORT")}


def test_position_mode_weighs_30(futures_client, exchange):
    exchange.control.reset_stats()
    futures_client.futures_get_position_mode()
    assert exchange.control.stats()["weight"]["GET /fapi/v1/positionSide/dual"] == 30


@pytest.mark.parametrize("mode", ["omit", "stale"])
def test_lagging_reads(futures_client, exchange, account, mode):
    market(futures_client, "BUY")
    exchange.control.lag_positions(account["api_key"], count=2, mode=mode)
    market(futures_client, "BUY", qty="0.005")
    lagging = {} if mode == "omit" else {("BTCUSDT", "BOTH"): "0.010"}
    assert rows(futures_client) == lagging
    assert rows(futures_client) == lagging
    assert rows(futures_client) == {("BTCUSDT", "BOTH"): "0.015"}  # caught up


@pytest.mark.parametrize(
    "kind, prefix, order_type",
    [
        ("liquidation", "autoclose-", "LIQUIDATION"),
        ("adl", "adl_autoclose", "MARKET"),
        ("settlement", "settlement_autoclose-", "MARKET"),
    ],
)
def test_binance_closes_positions_itself(futures_client, exchange, account, kind, prefix, order_type):
    market(futures_client, "BUY")
    order = exchange.control.autoclose(account["api_key"], "BTCUSDT", kind, qty="0.004", price="59000")
    assert order["clientOrderId"].startswith(prefix) and order["type"] == order_type
    assert (order["side"], order["status"], order["reduceOnly"]) == ("SELL", "FILLED", True)
    assert rows(futures_client) == {("BTCUSDT", "BOTH"): "0.006"}
    last = futures_client.futures_account_trades(symbol="BTCUSDT")[-1]
    assert (last["orderId"], last["side"], last["qty"], last["price"]) == (
        order["orderId"],
        "SELL",
        "0.004",
        "59000.00",
    )
    assert last["realizedPnl"] == "-4.00000000"
    exchange.control.autoclose(account["api_key"], "BTCUSDT", kind)  # the rest
    assert rows(futures_client) == {}


def test_user_trades_from_id_cannot_be_combined_with_a_time(futures_client):
    market(futures_client, "BUY")
    assert api_error(futures_client.futures_account_trades, symbol="BTCUSDT", fromId=1, startTime=1).code == -1128


def test_conditional_orders_live_in_the_algo_service(futures_client, exchange, account):
    market(futures_client, "BUY")
    # (python-binance 1.0.37 routes these types to algoOrder by itself; the raw endpoint refuses them.)
    error = api_error(
        futures_client._request_futures_api,
        "post",
        "order",
        True,
        data={
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "TAKE_PROFIT_MARKET",
            "stopPrice": "62000",
            "quantity": "0.005",
        },
    )
    assert error.code == -4120
    algo = futures_client._request_futures_api(
        "post",
        "algoOrder",
        True,
        data={
            "algoType": "CONDITIONAL",
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "TAKE_PROFIT_MARKET",
            "triggerPrice": "62000",
            "quantity": "0.005",
            "reduceOnly": "true",
            "clientAlgoId": "tp-1",
        },
    )
    assert (algo["algoStatus"], algo["clientAlgoId"], algo["actualOrderId"]) == ("NEW", "tp-1", "")
    assert rows(futures_client) == {("BTCUSDT", "BOTH"): "0.010"}  # resting outside the matching engine

    done = exchange.control.trigger_algo_order(account["api_key"], client_algo_id="tp-1", price="62000")

    assert done["algoStatus"] == "FINISHED" and done["actualOrderId"]
    assert rows(futures_client) == {("BTCUSDT", "BOTH"): "0.005"}
    last = futures_client.futures_account_trades(symbol="BTCUSDT")[-1]
    assert (str(last["orderId"]), last["qty"], last["price"], last["realizedPnl"]) == (
        done["actualOrderId"],
        "0.005",
        "62000.00",
        "10.00000000",
    )
    queried = futures_client._request_futures_api("get", "algoOrder", True, data={"algoId": done["algoId"]})
    assert queried["algoStatus"] == "FINISHED"
    error = api_error(
        futures_client._request_futures_api,
        "delete",
        "algoOrder",
        True,
        force_params=True,
        data={"algoId": done["algoId"]},
    )
    assert error.code == -2011


def test_algo_updates_on_the_stream(exchange, account):
    """ALGO_UPDATE NEW, TRIGGERING, TRIGGERED (with the order's id) and FINISHED, in that order."""
    from sandbox import events
    from sandbox.engine import Engine

    engine, seen = Engine(), []
    engine.on_event = lambda acct, event: seen.append(event)
    acct = engine.create_account("k", "s")
    engine.place_order(
        acct,
        symbol="BTCUSDT",
        side="BUY",
        type="MARKET",
        quantity=__import__("decimal").Decimal("0.010"),
        price=None,
        time_in_force=None,
        client_order_id=None,
        reduce_only=False,
    )
    algo = engine.place_algo_order(
        acct,
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_MARKET",
        quantity=None,
        trigger_price=__import__("decimal").Decimal("58000"),
        price=None,
        time_in_force=None,
        client_algo_id="sl-1",
        reduce_only=False,
        close_position=True,
        position_side=None,
    )
    engine.trigger_algo_order(acct, algo)
    algo_events = [e["o"] for e in seen if e["e"] == "ALGO_UPDATE"]
    assert [e["X"] for e in algo_events] == ["NEW", "TRIGGERING", "TRIGGERED", "FINISHED"]
    assert algo_events[2]["ai"] == str(algo.actual_order.order_id) and algo_events[3]["aq"] == "0.010"
    assert not acct.positions[("BTCUSDT", "BOTH")].amount
    assert events.algo_update(algo, 0)["e"] == "ALGO_UPDATE"
