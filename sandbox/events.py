"""User-data stream payloads, field for field as Binance's USDⓈ-M docs describe them.

ORDER_TRADE_UPDATE: developers.binance.com/docs/derivatives/usds-margined-futures/user-data-streams/Event-Order-Update
ACCOUNT_UPDATE:     .../user-data-streams/Event-Balance-and-Position-Update
listenKeyExpired:   .../user-data-streams/Event-User-Data-Stream-Expired
TRADE_LITE:         .../user-data-streams/Event-Trade-Lite
ACCOUNT_CONFIG_UPDATE: .../user-data-streams/Event-Account-Configuration-Update-previous-Leverage-Update
MARGIN_CALL:        .../user-data-streams/Event-Margin-Call
ALGO_UPDATE:        .../user-data-streams/Event-Algo-Order-Update (the page is "Algo Order Update"; the event type
                    Binance sends, and names in `events=`, is ALGO_UPDATE — change log 2025-12-10, 2026-08-21)
Field names and value types (string decimals, integer ids and times, booleans) as the pages' response examples and
binance-connector-python's websocket_streams models show them.
"""

from __future__ import annotations

from .models import q8

LISTEN_KEY_EXPIRED = "listenKeyExpired"


def order_trade_update(order, exec_type: str, fill, now: int) -> dict:
    s = order.symbol
    return {
        "e": "ORDER_TRADE_UPDATE",
        "E": now,
        "T": now,
        "o": {
            "s": s.symbol,
            "c": order.client_order_id,
            "S": order.side,
            "o": order.type,
            "f": order.time_in_force,
            "q": s.fmt_qty(order.orig_qty),
            "p": s.fmt_price(order.price),
            "ap": s.fmt_avg(order.avg_price),
            "sp": "0",
            "x": exec_type,
            "X": order.status,
            "i": order.order_id,
            "l": s.fmt_qty(fill.qty) if fill else "0",
            "z": s.fmt_qty(order.executed_qty),
            "L": s.fmt_price(fill.price) if fill else "0",
            "N": "USDT",
            "n": q8(fill.commission) if fill else "0",
            "T": order.update_time,
            "t": fill.trade_id if fill else 0,
            "b": "0",
            "a": "0",
            "m": fill.maker if fill else False,
            "R": order.reduce_only,
            "wt": "CONTRACT_PRICE",
            "ot": order.type,
            "ps": order.position_side,
            "cp": False,
            "rp": q8(fill.realized_pnl) if fill else "0",
            "pP": False,
            "si": 0,
            "ss": 0,
            "V": order.stp_mode,
            "pm": order.price_match,
            "gtd": order.good_till_date,
        },
    }


def account_update(account, position, now: int) -> dict:
    s = position.symbol
    balance = q8(account.balance)
    return {
        "e": "ACCOUNT_UPDATE",
        "E": now,
        "T": now,
        "a": {
            "m": "ORDER",
            "B": [{"a": "USDT", "wb": balance, "cw": balance, "bc": "0"}],
            "P": [
                {
                    "s": s.symbol,
                    "pa": s.fmt_qty(position.amount),
                    "ep": s.fmt_avg(position.entry_price),
                    "bep": s.fmt_avg(position.entry_price),
                    "cr": "0",  # (pre-fee) accumulated realized
                    "up": q8(position.unrealized()),
                    "mt": "cross",
                    "iw": "0",
                    "ps": position.side,
                }
            ],
        },
    }


def algo_update(algo, now: int) -> dict:
    """User Data Streams, "Event: Algo Order Update" (event type ALGO_UPDATE; subscribed as ALGO_ORDER_UPDATE)."""
    s, actual = algo.symbol, algo.actual_order
    return {
        "e": "ALGO_UPDATE",
        "T": now,
        "E": now,
        "o": {
            "caid": algo.client_algo_id,
            "aid": algo.algo_id,
            "at": "CONDITIONAL",
            "o": algo.type,
            "s": s.symbol,
            "S": algo.side,
            "ps": algo.position_side,
            "f": algo.time_in_force,
            "q": s.fmt_qty(algo.quantity),
            "X": algo.status,
            "ai": str(actual.order_id) if actual else "",
            "ap": s.fmt_avg(actual.avg_price) if actual else "0",
            "aq": s.fmt_qty(actual.executed_qty) if actual else "0",
            "act": actual.type if actual else "0",
            "tp": s.fmt_price(algo.trigger_price),
            "p": s.fmt_price(algo.price),
            "V": "EXPIRE_MAKER",
            "wt": "CONTRACT_PRICE",
            "pm": "NONE",
            "cp": algo.close_position,
            "pP": False,
            "R": algo.reduce_only,
            "tt": algo.trigger_time,
            "gtd": 0,
            "rm": "",
        },
    }


def listen_key_expired(key: str, now: int) -> dict:
    return {"e": LISTEN_KEY_EXPIRED, "E": now, "listenKey": key}


def trade_lite(order, fill, now: int) -> dict:
    """Sent with every fill, before its ORDER_TRADE_UPDATE: "fast trade stream … only pushes TRADE execution type,
    and fewer data fields" (Event-Trade-Lite)."""
    s = order.symbol
    return {
        "e": "TRADE_LITE",
        "E": now,
        "T": fill.time,
        "s": s.symbol,
        "q": s.fmt_qty(order.orig_qty),
        "p": s.fmt_price(order.price),
        "m": fill.maker,
        "c": order.client_order_id,
        "S": order.side,
        "L": s.fmt_price(fill.price),
        "l": s.fmt_qty(fill.qty),
        "t": fill.trade_id,
        "i": order.order_id,
    }


def account_config_update(symbol: str, leverage: int, now: int) -> dict:
    """A symbol's leverage changed (the `ac` form of ACCOUNT_CONFIG_UPDATE; `ai` is the multi-assets mode)."""
    return {"e": "ACCOUNT_CONFIG_UPDATE", "E": now, "T": now, "ac": {"s": symbol, "l": int(leverage)}}


def margin_call(account, positions, now: int) -> dict:
    """The positions whose risk ratio is too high; `cw` only for cross margin (Event-Margin-Call)."""
    rows = []
    for position in positions:
        s = position.symbol
        notional = abs(position.amount * s.price)
        rows.append(
            {
                "s": s.symbol,
                "ps": "BOTH",
                "pa": s.fmt_qty(position.amount),
                "mt": "CROSSED",
                "iw": "0",
                "mp": s.fmt_avg(s.price),
                "up": q8(position.unrealized()),
                "mm": q8(notional / 200),
            }
        )
    return {"e": "MARGIN_CALL", "E": now, "cw": q8(account.balance), "p": rows}
