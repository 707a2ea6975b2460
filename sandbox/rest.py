"""Binance USDⓈ-M Futures REST (/fapi/...): routing, weight, auth, faults, and the endpoint handlers.

One aiohttp handler takes every /fapi request and dispatches on (method, path) from ROUTES, so the common
work (fault injection, weight, X-MBX-APIKEY, HMAC signature, timestamp window) lives in one place.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from .errors import INVALID_API_KEY, INVALID_SIGNATURE, ApiError, mandatory
from .limits import ORDER_LIMITS
from .models import CONDITIONAL_TYPES

NONE, USER_STREAM, SIGNED = 0, 1, 2
JSON = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _int(params: dict, name: str, required: bool = False) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise mandatory(name)
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        ) from None


def _decimal(params: dict, name: str) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise mandatory(name) from None
    if not value.is_finite():
        raise mandatory(name)
    return value


def _required(params: dict, name: str) -> str:
    value = params.get(name)
    if not value:
        raise mandatory(name)
    return value


def _limit(params: dict, default: int = 500, maximum: int = 1000) -> int:
    limit = _int(params, "limit")
    if limit is None or limit <= 0:
        return default
    return min(limit, maximum)


# --- endpoint handlers: (exchange, account or None, params) -> JSON-able -------------------------------
def ping(ex, account, params):
    return {}


def server_time(ex, account, params):
    return {"serverTime": ex.engine.now()}


def exchange_info(ex, account, params):
    return {
        "timezone": "UTC",
        "serverTime": ex.engine.now(),
        "futuresType": "U_MARGINED",
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": ex.limiter.limit_for(ex.client_ip),
            },
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": ORDER_LIMITS[1][1]},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": ORDER_LIMITS[0][1]},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [s.exchange_info() for s in ex.engine.symbols.values()],
    }


def new_order(ex, account, params):
    side = _required(params, "side")
    if side not in ("BUY", "SELL"):
        raise ApiError(-1117, "Invalid side.")
    type_ = _required(params, "type")
    if type_ in CONDITIONAL_TYPES:
        # Change log 2025-11 / New Order (TRADE): conditional types moved to the Algo Service (New Algo Order).
        raise ApiError(
            -4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead."
        )
    if type_ not in ("LIMIT", "MARKET"):
        raise ApiError(-1116, "Invalid orderType.")
    quantity = _decimal(params, "quantity")
    if quantity is None:
        raise mandatory("quantity")
    tif = params.get("timeInForce") or None
    if tif is not None and tif not in ("GTC", "IOC", "FOK", "GTX", "GTD"):
        raise ApiError(-1115, "Invalid timeInForce.")
    reduce_only = params.get("reduceOnly", "false").lower()
    if reduce_only not in ("true", "false"):
        raise ApiError(-1130, "Data sent for parameter 'reduceOnly' is not valid.")
    resp_type = params.get("newOrderRespType", "ACK")
    if resp_type not in ("ACK", "RESULT"):
        raise ApiError(-1136, "Invalid newOrderRespType.")
    client_id = params.get("newClientOrderId")
    if client_id == "":
        raise ApiError(-1118, "New client order ID was empty.")
    order = ex.engine.place_order(
        account,
        symbol=_required(params, "symbol"),
        side=side,
        type=type_,
        quantity=quantity,
        price=_decimal(params, "price"),
        time_in_force=tif,
        client_order_id=client_id,
        reduce_only=reduce_only == "true",
        price_match=params.get("priceMatch", "NONE"),
        stp_mode=params.get("selfTradePreventionMode", "EXPIRE_MAKER"),
        good_till_date=_int(params, "goodTillDate") or 0,
        position_side=params.get("positionSide"),
    )
    answer = order.to_binance_ack()
    if resp_type == "ACK":
        # ACK (the default) answers as the order was accepted: NEW, nothing executed yet — also for MARKET.
        answer.update(status="NEW", executedQty="0", cumQty="0", updateTime=order.time)
    return answer


def query_order(ex, account, params):
    return ex.engine.query_order(
        account, _required(params, "symbol"), _int(params, "orderId"), params.get("origClientOrderId")
    ).to_binance()


def cancel_order(ex, account, params):
    return ex.engine.cancel_order(
        account, _required(params, "symbol"), _int(params, "orderId"), params.get("origClientOrderId")
    ).to_binance_ack()


def open_orders(ex, account, params):
    return [o.to_binance() for o in ex.engine.open_orders(account, params.get("symbol") or None)]


def all_orders(ex, account, params):
    rows = ex.engine.all_orders(
        account,
        _required(params, "symbol"),
        _int(params, "orderId"),
        _int(params, "startTime"),
        _int(params, "endTime"),
        _limit(params),
    )
    return [o.to_binance_all_orders() for o in rows]


def user_trades(ex, account, params):
    rows = ex.engine.user_trades(
        account,
        _required(params, "symbol"),
        _int(params, "orderId"),
        _int(params, "startTime"),
        _int(params, "endTime"),
        _int(params, "fromId"),
        _limit(params),
    )
    return [f.to_binance() for f in rows]


def _positions(ex, account, params):
    symbol = params.get("symbol") or None
    if symbol is not None:
        ex.engine.symbol(symbol)
    return symbol


def position_risk_v2(ex, account, params):
    """v2: every symbol (one row each in one-way mode), zero positions included."""
    from .models import Position

    symbol = _positions(ex, account, params)
    sides = ("LONG", "SHORT") if account.dual_side else ("BOTH",)
    rows = []
    for name, sym in ex.engine.symbols.items():
        if symbol is None or name == symbol:
            rows += [(account.positions.get((name, side)) or Position(sym, side=side)).risk_v2() for side in sides]
    return rows


def position_risk_v3(ex, account, params):
    """v3: only symbols with a position (Binance also lists those with open orders; so do we)."""
    return ex.engine.position_rows(account, _positions(ex, account, params))


def position_mode(ex, account, params):
    """Get Current Position Mode (USER_DATA): {"dualSidePosition": true} is hedge mode."""
    return {"dualSidePosition": account.dual_side}


def change_position_mode(ex, account, params):
    """Change Position Mode (TRADE): dualSidePosition "true" (hedge) or "false" (one-way), mandatory."""
    raw = _required(params, "dualSidePosition").lower()
    if raw not in ("true", "false"):
        raise ApiError(-1130, "Data sent for parameter 'dualSidePosition' is not valid.")
    ex.engine.set_position_mode(account, raw == "true")
    return {"code": 200, "msg": "success"}


def new_algo_order(ex, account, params):
    """New Algo Order (TRADE): algoType CONDITIONAL only; STOP(_MARKET) / TAKE_PROFIT(_MARKET) /
    TRAILING_STOP_MARKET."""
    if _required(params, "algoType") != "CONDITIONAL":
        raise ApiError(-1130, "Data sent for parameter 'algoType' is not valid.")
    side = _required(params, "side")
    if side not in ("BUY", "SELL"):
        raise ApiError(-1117, "Invalid side.")
    tif = params.get("timeInForce") or None
    if tif is not None and tif not in ("GTC", "IOC", "FOK", "GTX", "GTD"):
        raise ApiError(-1115, "Invalid timeInForce.")
    flags = {}
    for name in ("reduceOnly", "closePosition"):
        raw = params.get(name, "false").lower()
        if raw not in ("true", "false"):
            raise ApiError(-1130, f"Data sent for parameter '{name}' is not valid.")
        flags[name] = raw == "true"
    client_id = params.get("clientAlgoId")
    if client_id == "":
        raise ApiError(-1118, "New client order ID was empty.")
    return ex.engine.place_algo_order(
        account,
        symbol=_required(params, "symbol"),
        side=side,
        type=_required(params, "type"),
        quantity=_decimal(params, "quantity"),
        trigger_price=_decimal(params, "triggerPrice"),
        price=_decimal(params, "price"),
        time_in_force=tif,
        client_algo_id=client_id,
        reduce_only=flags["reduceOnly"],
        close_position=flags["closePosition"],
        position_side=params.get("positionSide"),
    ).to_binance()


def query_algo_order(ex, account, params):
    return ex.engine.find_algo_order(account, _int(params, "algoId"), params.get("clientAlgoId")).to_binance()


def cancel_algo_order(ex, account, params):
    algo = ex.engine.cancel_algo_order(account, _int(params, "algoId"), params.get("clientAlgoId"))
    return {"algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id, "code": "200", "msg": "success"}


def listen_key_new(ex, account, params):
    return {"listenKey": ex.engine.listen_key_create(account)}


def listen_key_keepalive(ex, account, params):
    return {"listenKey": ex.engine.listen_key_keepalive(account, params.get("listenKey") or None)}


def listen_key_close(ex, account, params):
    ex.engine.listen_key_close(account, params.get("listenKey") or None)
    return {}


# (method, path) -> (IP weight, security, handler). openOrders weighs 40 without a symbol (see make_handler). A new
# order weighs 0 on the IP limit and counts 1 on the account's order limits instead (USDⓈ-M "New Order (TRADE)":
# request weight; the WebSocket API's order.place likewise weighs 0).
ROUTES = {
    ("GET", "/fapi/v1/ping"): (1, NONE, ping),
    ("GET", "/fapi/v1/time"): (1, NONE, server_time),
    ("GET", "/fapi/v1/exchangeInfo"): (1, NONE, exchange_info),
    ("POST", "/fapi/v1/order"): (0, SIGNED, new_order),
    ("GET", "/fapi/v1/order"): (1, SIGNED, query_order),
    ("DELETE", "/fapi/v1/order"): (1, SIGNED, cancel_order),
    ("GET", "/fapi/v1/openOrders"): (1, SIGNED, open_orders),
    ("GET", "/fapi/v1/allOrders"): (5, SIGNED, all_orders),
    ("GET", "/fapi/v1/userTrades"): (5, SIGNED, user_trades),
    ("GET", "/fapi/v2/positionRisk"): (5, SIGNED, position_risk_v2),
    ("GET", "/fapi/v3/positionRisk"): (5, SIGNED, position_risk_v3),
    # Get Current Position Mode: weight 30; Change Position Mode: weight 1 (USDⓈ-M "Account" / "Trade" docs).
    ("GET", "/fapi/v1/positionSide/dual"): (30, SIGNED, position_mode),
    ("POST", "/fapi/v1/positionSide/dual"): (1, SIGNED, change_position_mode),
    # Algo Service: New Algo Order weighs 0 on the IP limit; Query / Cancel Algo Order weigh 1.
    ("POST", "/fapi/v1/algoOrder"): (0, SIGNED, new_algo_order),
    ("GET", "/fapi/v1/algoOrder"): (1, SIGNED, query_algo_order),
    ("DELETE", "/fapi/v1/algoOrder"): (1, SIGNED, cancel_algo_order),
    ("POST", "/fapi/v1/listenKey"): (1, USER_STREAM, listen_key_new),
    ("PUT", "/fapi/v1/listenKey"): (1, USER_STREAM, listen_key_keepalive),
    ("DELETE", "/fapi/v1/listenKey"): (1, USER_STREAM, listen_key_close),
}


def _split_signature(raw: str) -> tuple[str, str] | None:
    i = raw.rfind("signature=")
    if i < 0 or (i > 0 and raw[i - 1] != "&"):
        return None
    return raw[: max(i - 1, 0)], raw[i + 10 :]


def _check_signature(account, query: str, body: str) -> None:
    found = _split_signature(body) if "signature=" in body else None
    if found is not None:
        payload, signature = query + found[0], found[1]
    else:
        found = _split_signature(query)
        if found is None:
            raise mandatory("signature")
        payload, signature = found
    secret = account.api_secret.encode()
    signature = signature.lower()
    expected = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, signature):
        return
    # python-binance signs the raw values but sends a form-encoded body: accept the decoded form too.
    decoded = unquote_plus(payload)
    if decoded != payload and hmac.compare_digest(
        hmac.new(secret, decoded.encode(), hashlib.sha256).hexdigest(), signature
    ):
        return
    raise ApiError(*INVALID_SIGNATURE)


def _check_timestamp(ex, params: dict) -> None:
    timestamp = _int(params, "timestamp", required=True)
    recv_window = _int(params, "recvWindow")
    if recv_window is None:
        recv_window = 5000
    elif recv_window <= 0 or recv_window > 60000:
        raise ApiError(-1130, "Data sent for parameter 'recvWindow' is not valid.")
    # Binance's rule (USDⓈ-M "General Info" → "Timing security"; error codes page, -1021 INVALID_TIMESTAMP): a
    # request is processed only if timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow, against
    # the exchange's own clock — here the sandbox clock, which advance_clock / set_clock_offset move away from the
    # host's. A client must sync with GET /fapi/v1/time, as against Binance.
    server = ex.engine.now()
    if timestamp < server + 1000 and server - timestamp <= recv_window:
        return
    if timestamp >= server + 1000:
        raise ApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")


# Binance's USDⓈ-M "General Info" (HTTP Return Codes): "HTTP 408 return code is used when a timeout has occurred
# while waiting for a response from the backend server"; the body carries -1007 TIMEOUT ("…execution status
# unknown", error codes page). The order may or may not have been made: kind "408" (not made) and "408_placed"
# (made) answer exactly alike, which is the point.
TIMEOUT_408 = {
    "code": -1007,
    "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
}


def _fault_response(ex, fault, now: int) -> web.Response:
    kind = fault.kind
    if kind == "408":
        return _json(408, TIMEOUT_408)
    if kind == "500":
        return _json(500, {"code": -1000, "msg": "An unknown error occured while processing the request."})
    if kind == "502":
        return web.Response(
            status=502, text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
        )
    if kind == "503":
        return _json(503, {"code": -1008, "msg": "Service Unavailable."})
    if kind == "429":
        retry = fault.retry_after if fault.retry_after is not None else 60 - (now // 1000) % 60
        return _json(
            429,
            {
                "code": -1003,
                "msg": f"Too many requests; current limit is {ex.limiter.limit} "
                "requests per minute. Please use the websocket for live updates to avoid polling the API.",
            },
            {"Retry-After": str(retry)},
        )
    return _json(
        418,
        {
            "code": -1003,
            "msg": f"Way too many requests; IP banned until {now + 120000}. "
            "Please use the websocket for live updates to avoid bans.",
        },
        {"Retry-After": str(fault.retry_after if fault.retry_after is not None else 120)},
    )


UNKNOWN_503 = {"code": -1000, "msg": "Unknown error, please check your request or try again later."}
# Fault kinds whose request IS executed before the answer: the answer they then get.
EXECUTED_THEN = {"503_unknown_placed": (503, UNKNOWN_503), "408_placed": (408, TIMEOUT_408)}


def _json(status: int, body, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=_dumps(body).encode(), content_type=JSON, headers=headers)


def make_handler(ex):
    engine, limiter, orders, stats, faults = ex.engine, ex.limiter, ex.orders, ex.stats, ex.faults

    async def handle(request: web.Request) -> web.Response:
        method, path = request.method, request.path
        endpoint = f"{method} {path}"
        route = ROUTES.get((method, path))
        if route is None:
            stats.record(endpoint, 0, 404)
            return _json(404, {"code": -1000, "msg": f"Path {path}, Method {method} is invalid"})
        body = (await request.read()).decode() if request.can_read_body else ""
        fault = faults.take(path, method) if faults.rules else None
        unknown_after = None
        if fault is not None:
            if fault.kind == "hang":
                await asyncio.sleep(fault.hang_sec)  # then served normally: the client has given up by now
            elif fault.kind in EXECUTED_THEN:
                unknown_after = EXECUTED_THEN[fault.kind]  # executed, then answered "execution status unknown"
            else:
                stats.record(endpoint, 0, int(fault.kind), request.headers.get("X-MBX-APIKEY", ""))
                return _fault_response(ex, fault, engine.now())
        weight, security, handler = route
        query = request.rel_url.raw_query_string
        params = dict(parse_qsl(body)) if body else {}
        if query:
            params.update(parse_qsl(query))  # the query string wins, as on Binance
        if handler is open_orders and not params.get("symbol"):
            weight = 40
        api_key = request.headers.get("X-MBX-APIKEY")
        now = engine.now()
        # Binance counts weight per source IP, whatever the API key ("LIMITS" → IP limits).
        client_ip = request.remote or ""
        used, limited, retry = limiter.charge(client_ip, weight, now)
        headers = {"X-MBX-USED-WEIGHT-1M": str(used)}
        try:
            if limited:
                headers["Retry-After"] = str(retry)
                if limited == 429:
                    raise ApiError(
                        -1003,
                        f"Too many requests; current limit is {limiter.limit_for(client_ip)} "
                        "requests per minute. Please use the websocket for live updates to avoid polling "
                        "the API.",
                        429,
                    )
                raise ApiError(
                    -1003,
                    f"Way too many requests; IP banned until {now + retry * 1000}. Please use "
                    "the websocket for live updates to avoid bans.",
                    418,
                )
            account = None
            if security != NONE:
                if not api_key:
                    raise ApiError(-2014, "API-key format invalid.", 401)
                account = engine.accounts.get(api_key)
                if account is None:
                    raise ApiError(*INVALID_API_KEY, 401)
                if security == SIGNED:
                    _check_signature(account, query, body)
                    _check_timestamp(ex, params)
            if handler is new_order:
                counts, over = orders.count(api_key, now)
                headers.update(counts)
                if over is not None:
                    limit, interval_ms, name = over
                    raise ApiError(
                        -1015,
                        f"Too many new orders; current limit is {limit} orders per {name}.",
                        429,
                        {"Retry-After": str(math.ceil((interval_ms - now % interval_ms) / 1000))},
                    )
            ex.client_ip = client_ip
            result = handler(ex, account, params)
            status, payload = 200, result
        except ApiError as err:
            status, payload = err.status, err.body()
            headers.update(err.headers)
        if unknown_after is not None:
            status, payload = unknown_after
        stats.record(endpoint, weight, status, request.headers.get("X-MBX-APIKEY", ""))
        return web.Response(status=status, body=_dumps(payload).encode(), content_type=JSON, headers=headers)

    return handle
