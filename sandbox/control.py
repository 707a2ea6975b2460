"""``SandboxControl(base_url)``: a small synchronous client for the sandbox's control API (/_sandbox/...).

Every method returns the decoded JSON answer and raises ``SandboxControlError`` on a non-2xx answer.
Orders are picked by ``api_key`` + ``symbol`` + (``order_id`` or ``client_order_id``).
"""

from __future__ import annotations

from typing import Any

import requests


class SandboxControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _order_ref(api_key, symbol, order_id, client_order_id) -> dict:
    if order_id is None and client_order_id is None:
        raise ValueError("give order_id or client_order_id")
    ref = {"api_key": api_key, "symbol": symbol}
    if order_id is not None:
        ref["order_id"] = int(order_id)
    if client_order_id is not None:
        ref["client_order_id"] = client_order_id
    return ref


class SandboxControl:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, payload: dict | None = None, params: dict | None = None):
        response = self.session.request(
            method, f"{self.base_url}/_sandbox{path}", json=payload, params=params, timeout=self.timeout
        )
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        if not response.ok:
            raise SandboxControlError(response.status_code, body.get("error", str(body)))
        return body

    # --- whole sandbox ---------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._call("GET", "/health")

    def reset(self) -> dict:
        """Wipe everything: accounts, orders, listenKeys, sockets, faults, counters, clock offset, limits."""
        return self._call("POST", "/reset")

    def advance_clock(self, ms: int) -> dict:
        """Move the sandbox clock forward (listenKey expiry, archival, 24 h connections follow it)."""
        return self._call("POST", "/clock/advance", {"ms": int(ms)})

    def set_clock_offset(self, ms: int) -> dict:
        """The sandbox clock = the host's + ms from now on (negative: behind). Signed requests are judged against it:
        a client that does not sync with GET /fapi/v1/time gets -1021 once the offset leaves its recvWindow."""
        return self._call("POST", "/clock/offset", {"ms": int(ms)})

    def server_time(self) -> int:
        return self._call("GET", "/clock")["server_time"]

    def stats(self) -> dict:
        """{requests: {"GET /fapi/v1/order": n}, weight: {...}, statuses: {...}, total_requests, total_weight,
        requests_by_api_key: {key: n}, statuses_by_api_key: {key: {"200": n}}, used_weight_1m: {source IP: used},
        weight_limit, ip_weight_limits: {ip: limit},
        bans: {ip: {bans, banned_until}}}."""
        return self._call("GET", "/stats")

    def reset_stats(self) -> dict:
        """Zero the counters, every IP's used weight and every account's order counts (and lift 418 bans)."""
        return self._call("POST", "/stats/reset")

    def set_weight_limit(self, limit: int, ip: str | None = None) -> dict:
        """REQUEST_WEIGHT per minute for every source IP, or for `ip` only."""
        payload: dict[str, Any] = {"limit": int(limit)}
        if ip:
            payload["ip"] = ip
        return self._call("POST", "/weight_limit", payload)

    def set_ban_time_scale(self, scale: float) -> dict:
        """IP bans last `scale` × Binance's (2 min, doubling to 3 days); 1.0 again after reset()."""
        return self._call("POST", "/ban_time_scale", {"scale": float(scale)})

    # --- accounts, prices, orders ------------------------------------------------------------------------
    def create_account(
        self, api_key: str | None = None, api_secret: str | None = None, balance: str = "100000"
    ) -> dict:
        """-> {"api_key", "api_secret", "balance"}; missing key/secret are generated."""
        payload = {"balance": str(balance)}
        if api_key is not None:
            payload["api_key"] = api_key
        if api_secret is not None:
            payload["api_secret"] = api_secret
        return self._call("POST", "/accounts", payload)

    def set_price(self, symbol: str, price, *, fill_crossed: bool = False) -> dict:
        """Set the symbol's price (MARKET fills, mark price). fill_crossed=True also fills resting LIMIT
        orders the new price crosses, at their limit price."""
        return self._call("POST", "/price", {"symbol": symbol, "price": str(price), "fill_crossed": fill_crossed})

    def fill_order(
        self, api_key: str, symbol: str, *, order_id=None, client_order_id=None, qty=None, price=None
    ) -> dict:
        """Fill an open order fully, or by `qty` (partial; a multiple of the symbol's step, as on Binance); price
        defaults to the order's (LIMIT) or symbol's."""
        payload = _order_ref(api_key, symbol, order_id, client_order_id)
        if qty is not None:
            payload["qty"] = str(qty)
        if price is not None:
            payload["price"] = str(price)
        return self._call("POST", "/orders/fill", payload)

    def cancel_order(self, api_key: str, symbol: str, *, order_id=None, client_order_id=None) -> dict:
        """Cancel as the exchange would (e.g. an operator on the web UI): emits CANCELED."""
        return self._call("POST", "/orders/cancel", _order_ref(api_key, symbol, order_id, client_order_id))

    def expire_order(
        self, api_key: str, symbol: str, *, order_id=None, client_order_id=None, status: str = "EXPIRED"
    ) -> dict:
        """EXPIRED (or EXPIRED_IN_MATCH) with whatever it filled so far."""
        payload = _order_ref(api_key, symbol, order_id, client_order_id)
        payload["status"] = status
        return self._call("POST", "/orders/expire", payload)

    def get_order(self, api_key: str, symbol: str, order_id=None, client_order_id=None) -> dict:
        """The order's true state in Binance's shape (+ "archived"), ignoring archival and not-found faults."""
        params = {k: str(v) for k, v in _order_ref(api_key, symbol, order_id, client_order_id).items()}
        return self._call("GET", "/orders", params=params)

    def bulk_orders(
        self,
        api_key: str,
        symbol: str,
        count: int,
        *,
        side: str = "BUY",
        type: str = "LIMIT",
        quantity=None,
        price=None,
        status: str = "NEW",
        client_order_id_prefix: str = "bulk-",
    ) -> dict:
        """Put `count` orders on the book at once (no auth, no events); clientOrderId = prefix + orderId.
        -> {"count", "first_order_id", "last_order_id", "client_order_id_prefix"}."""
        payload = {
            "api_key": api_key,
            "symbol": symbol,
            "count": int(count),
            "side": side,
            "type": type,
            "status": status,
            "client_order_id_prefix": client_order_id_prefix,
        }
        if quantity is not None:
            payload["quantity"] = str(quantity)
        if price is not None:
            payload["price"] = str(price)
        return self._call("POST", "/orders/bulk", payload)

    def hide_order(
        self, api_key: str, symbol: str, *, order_id=None, client_order_id=None, seconds: float = 60
    ) -> dict:
        """Binance's -2013 for an order that exists: for `seconds` (sandbox clock) GET order answers -2013 and
        allOrders/openOrders leave the order out; it still rests on the book and can fill (events are sent)."""
        payload = _order_ref(api_key, symbol, order_id, client_order_id)
        payload["seconds"] = float(seconds)
        return self._call("POST", "/orders/hide", payload)

    def set_leverage(self, api_key: str, symbol: str, leverage: int) -> dict:
        """Change a symbol's leverage: ACCOUNT_CONFIG_UPDATE on the stream. -> the event."""
        return self._call("POST", "/leverage", {"api_key": api_key, "symbol": symbol, "leverage": int(leverage)})

    def margin_call(self, api_key: str) -> dict:
        """A margin call on the account's open positions: MARGIN_CALL on the stream. -> the event."""
        return self._call("POST", "/margin_call", {"api_key": api_key})

    def algo_order(
        self, api_key: str, symbol: str, *, quantity, trigger_price, side: str = "SELL", type: str = "STOP_MARKET"
    ) -> dict:
        """A conditional order placed in Binance's Algo service (ALGO_UPDATE NEW on the stream). -> the event."""
        return self._call(
            "POST",
            "/algo_orders",
            {
                "api_key": api_key,
                "symbol": symbol,
                "side": side,
                "quantity": str(quantity),
                "trigger_price": str(trigger_price),
                "type": type,
            },
        )

    def positions(self, api_key: str) -> dict:
        """{"balance": "...", "positions": [non-zero positions in /fapi/v3/positionRisk shape]}."""
        return self._call("GET", "/positions", params={"api_key": api_key})

    def lag_positions(self, api_key: str, count: int = 1, mode: str = "omit") -> dict:
        """The next `count` positionRisk reads lag the matching engine: "omit" (the rows are missing) or "stale"
        (the rows as they are now, whatever happens meanwhile)."""
        return self._call("POST", "/positions/lag", {"api_key": api_key, "count": int(count), "mode": mode})

    def autoclose(
        self, api_key: str, symbol: str, kind: str = "liquidation", *, position_side: str = "BOTH", qty=None, price=None
    ) -> dict:
        """Binance closes the position, or `qty` of it, itself: kind "liquidation" (client id autoclose-…), "adl"
        (adl_autoclose) or "settlement" (settlement_autoclose-…), at `price` (default the symbol's). -> the order."""
        payload = {"api_key": api_key, "symbol": symbol, "kind": kind, "position_side": position_side}
        if qty is not None:
            payload["qty"] = str(qty)
        if price is not None:
            payload["price"] = str(price)
        return self._call("POST", "/positions/autoclose", payload)

    def trigger_algo_order(self, api_key: str, *, algo_id=None, client_algo_id=None, price=None) -> dict:
        """The algo order's trigger condition is met: it places its order in the matching engine (a MARKET one fills
        at once, at `price` or the symbol's). -> the algo order (algoStatus FINISHED or TRIGGERED)."""
        payload: dict[str, Any] = {"api_key": api_key}
        if algo_id is not None:
            payload["algo_id"] = int(algo_id)
        if client_algo_id is not None:
            payload["client_algo_id"] = client_algo_id
        if price is not None:
            payload["price"] = str(price)
        return self._call("POST", "/algo_orders/trigger", payload)

    def set_position_mode(self, api_key: str, dual_side_position: bool) -> dict:
        """Hedge mode on (True) or off, as on the web UI: refused (409) with open orders or positions."""
        return self._call("POST", "/position_mode", {"api_key": api_key, "dual_side_position": dual_side_position})

    # --- user-data stream --------------------------------------------------------------------------------
    def listen_keys(self, api_key: str) -> dict:
        """{"listen_key": key or None, "expires_at": ms or None, "connections": n, "events_paused": bool,
        "subscriptions": [[event types of one connection, sorted], …]}."""
        return self._call("GET", "/listen_keys", params={"api_key": api_key})

    def drop_connections(self, api_key: str) -> dict:
        """Cut the account's WebSocket connections (TCP abort, no close frame). -> {"dropped": n}."""
        return self._call("POST", "/ws/drop", {"api_key": api_key})

    def push_raw(self, api_key: str, raw: str) -> dict:
        """Send a raw text frame to the account's live user-stream connections (a duplicate or out-of-order event,
        a malformed payload, …), as is. -> {"sent": n}."""
        return self._call("POST", "/ws/push", {"api_key": api_key, "raw": raw})

    def expire_listen_key(self, api_key: str) -> dict:
        """Expire the account's listenKey now: listenKeyExpired is sent, sockets closed, keepalive -> -1125."""
        return self._call("POST", "/listen_keys/expire", {"api_key": api_key})

    def pause_events(self, api_key: str) -> dict:
        """Events for this account are LOST until resume_events (as during a Binance stream outage)."""
        return self._call("POST", "/events/pause", {"api_key": api_key})

    def resume_events(self, api_key: str) -> dict:
        return self._call("POST", "/events/resume", {"api_key": api_key})

    # --- faults --------------------------------------------------------------------------------------------
    def inject_fault(
        self,
        path: str,
        kind: str,
        count: int = 1,
        method: str | None = None,
        hang_sec: float | None = None,
        retry_after: int | None = None,
    ) -> dict:
        """Next `count` requests on `path` (and `method`, if given) fail. kind: "408" (Binance's backend timeout, not
        executed), "408_placed" (executed, then the same 408), "500", "502", "503",
        "503_unknown_placed" (the request IS executed, then 503 "Unknown error..."), "429", "418",
        "hang" (sleep hang_sec, then served normally). retry_after: the Retry-After a 429/418 fault sends
        (default: what Binance would, the seconds to the next minute / 120)."""
        payload = {"path": path, "kind": str(kind), "count": int(count)}
        if method is not None:
            payload["method"] = method
        if hang_sec is not None:
            payload["hang_sec"] = float(hang_sec)
        if retry_after is not None:
            payload["retry_after"] = int(retry_after)
        return self._call("POST", "/faults", payload)

    def clear_faults(self) -> dict:
        return self._call("DELETE", "/faults")

    def set_not_found_window(self, ms: int) -> dict:
        """GET /fapi/v1/order answers -2013 for orders younger than `ms` (sandbox clock); 0 turns it off."""
        return self._call("POST", "/not_found_window", {"ms": int(ms)})

    def arm_cancel_race(self, api_key: str, symbol: str | None = None, *, order_id=None, client_order_id=None) -> dict:
        """The next cancel of that order (or, with no order given, the account's next cancel) loses the race:
        the order fills fully first, then the cancel answers -2011."""
        if order_id is None and client_order_id is None:
            return self._call("POST", "/cancel_race", {"api_key": api_key})
        return self._call("POST", "/cancel_race", _order_ref(api_key, symbol, order_id, client_order_id))
