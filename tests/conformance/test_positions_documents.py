"""The sandbox answers with the fields Binance's documentation shows (the documents in this folder)."""

import json
from decimal import Decimal
from pathlib import Path

from sandbox import events
from sandbox.engine import Engine

HERE = Path(__file__).resolve().parent


def document(name):
    return json.loads((HERE / name).read_text())


def hedged_engine():
    engine, seen = Engine(), []
    engine.on_event = lambda account, event: seen.append(event)
    account = engine.create_account("k", "s")
    engine.set_position_mode(account, True)
    for side, ps in (("BUY", "LONG"), ("SELL", "SHORT")):
        engine.place_order(
            account,
            symbol="BTCUSDT",
            side=side,
            type="MARKET",
            quantity=Decimal("0.010"),
            price=None,
            time_in_force=None,
            client_order_id=None,
            reduce_only=False,
            position_side=ps,
        )
    return engine, account, seen


def test_position_risk_v3_in_hedge_mode():
    engine, account, _ = hedged_engine()
    rows = engine.position_rows(account, None)
    documented = document("positionRisk_v3_hedge.json")["example"]
    assert [set(r) for r in rows] == [set(r) for r in documented]
    assert [(r["positionSide"], r["positionAmt"]) for r in rows] == [("LONG", "0.010"), ("SHORT", "-0.010")]


def test_user_trades_rows():
    engine, account, _ = hedged_engine()
    fill = engine.user_trades(account, "BTCUSDT", None, None, None, None, 1000)[0].to_binance()
    assert set(fill) == set(document("userTrades.json")["example"][0])


def test_algo_order_and_algo_update():
    engine, account, seen = hedged_engine()
    algo = engine.place_algo_order(
        account,
        symbol="BTCUSDT",
        side="SELL",
        type="TAKE_PROFIT_MARKET",
        quantity=Decimal("0.005"),
        trigger_price=Decimal("62000"),
        price=None,
        time_in_force=None,
        client_algo_id="tp-1",
        reduce_only=False,
        close_position=False,
        position_side="LONG",
    )
    assert set(algo.to_binance()) == set(document("algoOrder.json")["example"])
    update = events.algo_update(algo, 0)
    documented = document("ALGO_UPDATE.json")["example"]
    assert set(update) == set(documented) and set(update["o"]) == set(documented["o"])


def test_autoclose_order_update():
    engine, account, seen = hedged_engine()
    engine.autoclose(account, "BTCUSDT", "liquidation", "LONG")
    update = [e for e in seen if e["e"] == "ORDER_TRADE_UPDATE"][-1]
    documented = document("ORDER_TRADE_UPDATE_autoclose.json")["example"]
    assert set(update["o"]) == set(documented["o"])
    assert (update["o"]["o"], update["o"]["x"], update["o"]["c"][:10]) == ("LIQUIDATION", "CALCULATED", "autoclose-")
