"""One account's gateway to Binance USDⓈ-M Futures, over python-binance.

Knows Binance, not models or trade states: it takes keys (or an account-like object), returns Binance's own dicts
(string decimals untouched) and maps Binance's failures to the few exceptions in `trades.exceptions`.

How it uses python-binance 1.0.37 (read from its source, `binance/client.py` and `base_client.py`):

* ``Client(api_key, api_secret, requests_params={"timeout": t}, ping=False)``: ``ping=False`` because the default
  pings *spot* (api.binance.com), unreachable offline and irrelevant here; ``FUTURES_URL`` is replaced on the
  instance by ``{rest_url}/fapi`` so URIs are ``{rest_url}/fapi/v1/<path>``. Never ``testnet=True``: that would
  swap in python-binance's hard-coded testnet URL, and our settings already say where the testnet is.
* Every call goes through ``Client._request_futures_api`` → ``Client._request`` → the client's own
  ``requests.Session`` (one per gateway, keep-alive, the ``X-MBX-APIKEY`` header set once on the session).
  Signed calls get ``timestamp`` + ``recvWindow`` (``REQUEST_RECVWINDOW``, set per instance) and an HMAC-SHA256
  ``signature``; GET parameters go in the query string, POST/PUT parameters in the form body. python-binance puts
  DELETE parameters in the body; we pass ``force_params=True`` so they go in the query string, which Binance
  documents for every method and which no proxy strips.
* python-binance does **not** retry: ``_request`` makes one ``session.<method>()`` call, and requests' default
  adapter has ``max_retries=0`` (urllib3 ``Retry(0, read=False)``), so a POST is never replayed behind our back.
  We do not retry either — retries belong to the Celery task (``trades.exceptions.TRANSIENT_ERRORS``).
* Errors: non-2xx → ``BinanceAPIException`` (carries the ``requests.Response``); 2xx with a non-JSON body →
  ``BinanceRequestException``; transport failures surface as ``requests`` exceptions. We map all of them from the
  raw response (status, ``Retry-After``, body) with ``trades.exceptions.error_from_response`` /
  ``error_from_transport`` — python-binance's own message would embed whole HTML pages.
* ``client.response`` holds the last ``requests.Response``; ``used_weight`` reads ``X-MBX-USED-WEIGHT-1M`` from it.
* Time: Binance rejects a signed request with -1021 unless ``timestamp < serverTime + 1000`` and ``serverTime -
  timestamp <= recvWindow`` (USDⓈ-M "General Info" → timing security). A process keeps one offset to the exchange's
  clock per REST base URL, shared by all its gateways (``ExchangeClock``; threads and tasks create gateways all the
  time, and a fresh one must not start at zero on a drifting host): taken from ``GET /fapi/v1/time`` (weight 1)
  before the first signed call, refreshed every ``CLOCK_SYNC_INTERVAL_SEC`` and after any -1021. A -1021 is retried
  once, after a re-sync, whatever the request — placements too: -1021 means the request was refused before being
  processed (error codes page: INVALID_TIMESTAMP), so nothing was executed and sending it again cannot double it.

Request weight (``trades.egress``): Binance limits weight per IP for every account behind it. Before sending, each
call asks the fleet-wide budget of its egress (source address + exchange host) for the route's weight
(``ROUTE_WEIGHTS``); it is refused — ``RateLimited`` raised, nothing sent — while any process has seen a 429/418 on
that egress (until its Retry-After) or when the weight would take the minute past the share of the call's priority.
Placements and cancels are priority "order", listenKey calls "keepalive", everything else the gateway's
``priority`` ("reconcile" unless the caller says "verify", "deep" or "positions"). After each answer the count is
raised to Binance's ``X-MBX-USED-WEIGHT-1M``; a 429/418 marks the egress limited for every process. The limit comes
from ``exchangeInfo.rateLimits`` (fetched once an hour per process, 2,400 until known) unless
``BINANCE_WEIGHT_LIMIT`` is set. With ``source_address`` the connections leave from that local address.

Keys never leave this object: python-binance logs request details only with ``verbose=True`` (never set here);
urllib3's DEBUG lines show the URL (signature, no key); our log lines and exception messages carry the account
label, the endpoint and Binance's message, with the key and secret scrubbed from any text we did not write; the
exceptions hold no response object and are raised ``from None``.

Not thread-safe (python-binance keeps per-call state on the client): one gateway per account per thread/task.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException
from requests.adapters import HTTPAdapter

from trades import egress
from trades.exceptions import (
    TRANSIENT_ERRORS,
    ClockSkew,
    ExchangeError,
    ExchangeUnavailable,
    ListenKeyExpired,
    OrderNotFound,
    RateLimited,
    TransientExchangeError,
    UnknownOrder,
    error_from_response,
    error_from_transport,
)

__all__ = [
    "BinanceFuturesClient",
    "ExchangeError",
    "OrderNotFound",
    "UnknownOrder",
    "ListenKeyExpired",
    "ClockSkew",
    "TransientExchangeError",
    "RateLimited",
    "ExchangeUnavailable",
    "TRANSIENT_ERRORS",
]

logger = logging.getLogger(__name__)

DEFAULT_REST_URL = "https://fapi.binance.com"
DEFAULT_TESTNET_REST_URL = "https://testnet.binancefuture.com"
DEFAULT_HTTP_TIMEOUT = 10.0
DEFAULT_RECV_WINDOW = 5000

ALL_ORDERS_PAGE_LIMIT = 1000  # Binance's maximum for GET /fapi/v1/allOrders
# allOrders rejects startTime..endTime spans of 7 days or more; endTime is inclusive, so a window of 7 d - 1 ms
# covers [start, start + 7 d) exactly and consecutive windows neither overlap nor leave a gap.
ALL_ORDERS_MAX_WINDOW_MS = 7 * 24 * 3600 * 1000 - 1
# userTrades: the same 7-day limit and at most 1000 rows a call; fromId cannot be sent with startTime/endTime.
USER_TRADES_PAGE_LIMIT = 1000
USER_TRADES_MAX_WINDOW_MS = ALL_ORDERS_MAX_WINDOW_MS


# IP request weight per route (USDⓈ-M REST docs, "Request Weight" of each endpoint). A new order weighs 0 on the IP
# (it counts on the account's ORDERS limits instead); openOrders weighs 40 without a symbol; unknown routes 1.
ROUTE_WEIGHTS = {
    ("POST", "order"): 0,
    ("GET", "order"): 1,
    ("DELETE", "order"): 1,
    ("GET", "openOrders"): 1,
    ("GET", "allOrders"): 5,
    ("GET", "userTrades"): 5,
    ("GET", "positionRisk"): 5,
    ("GET", "time"): 1,
    ("GET", "exchangeInfo"): 1,
    ("POST", "listenKey"): 1,
    ("PUT", "listenKey"): 1,
    ("DELETE", "listenKey"): 1,
    ("GET", "positionSide/dual"): 30,
    ("POST", "positionSide/dual"): 1,
    ("POST", "algoOrder"): 0,
    ("GET", "algoOrder"): 1,
    ("DELETE", "algoOrder"): 1,
}
ORDERS_OPEN_NO_SYMBOL_WEIGHT = 40
BUDGET_UNAVAILABLE_RETRY_SEC = 5.0  # the budget store did not answer: try again this much later
CODE_TOO_MANY_ORDERS = -1015  # 429 for the account's ORDERS limits ("General Info" → LIMITS: counted per account)
# Routes whose priority is fixed by what they do, whatever the gateway's: placements and cancels go first, then the
# user stream's listenKey upkeep.
ROUTE_PRIORITIES = {
    ("POST", "order"): egress.ORDER,
    ("DELETE", "order"): egress.ORDER,
    ("POST", "algoOrder"): egress.ORDER,
    ("DELETE", "algoOrder"): egress.ORDER,
    ("POST", "listenKey"): egress.KEEPALIVE,
    ("PUT", "listenKey"): egress.KEEPALIVE,
    ("DELETE", "listenKey"): egress.KEEPALIVE,
}


class _SourceAddressAdapter(HTTPAdapter):
    """requests' adapter with every connection bound to one local address (urllib3's ``source_address``)."""

    def __init__(self, address: str) -> None:
        self._source = (address, 0)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["source_address"] = self._source
        return super().proxy_manager_for(*args, **kwargs)


CLOCK_SYNC_INTERVAL_SEC = 300.0  # the shared clock offset is refreshed this often (and after any -1021)


class ExchangeClock:
    """The offset (ms) from this host's clock to each exchange's (by REST base URL), shared by every gateway of the
    process and safe across threads. An unknown or stale offset asks the next signed call to sync first."""

    def __init__(self, interval_sec: float = CLOCK_SYNC_INTERVAL_SEC) -> None:
        self.interval_sec = interval_sec
        self._lock = threading.Lock()
        self._offsets: dict[str, tuple[int, float]] = {}  # rest_url -> (offset ms, time.monotonic() of the sync)

    def offset_ms(self, rest_url: str) -> int:
        with self._lock:
            entry = self._offsets.get(rest_url)
        return entry[0] if entry else 0

    def due(self, rest_url: str) -> bool:
        with self._lock:
            entry = self._offsets.get(rest_url)
        return entry is None or time.monotonic() - entry[1] >= self.interval_sec

    def record(self, rest_url: str, offset_ms: int) -> None:
        with self._lock:
            self._offsets[rest_url] = (int(offset_ms), time.monotonic())

    def invalidate(self, rest_url: str) -> None:
        """A -1021 says the offset is wrong: keep it for now, but sync before the next signed call."""
        with self._lock:
            entry = self._offsets.get(rest_url)
            if entry is not None:
                self._offsets[rest_url] = (entry[0], float("-inf"))

    def reset(self) -> None:
        with self._lock:
            self._offsets.clear()


EXCHANGE_CLOCK = ExchangeClock()


class BinanceFuturesClient:
    """Gateway for one Binance USDⓈ-M Futures account. See the module docstring for the contract."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        rest_url: str = DEFAULT_REST_URL,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        recv_window: int = DEFAULT_RECV_WINDOW,
        account_label: str = "",
        source_address: str | None = None,
        priority: str = egress.RECONCILE,
        budget: egress.WeightBudget | None = None,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._host = urlsplit(self.rest_url).netloc
        egress.share_of(priority)  # an unknown priority fails here, not at the first call
        self.priority = priority
        self.source_address = source_address or None
        self.egress = egress.egress_name(self.source_address, self._host)
        self._budget = budget
        self.timeout = float(timeout)
        self.recv_window = int(recv_window)
        self.account_label = account_label or "account"
        self.http_calls = 0
        self._used_weight: int | None = None
        self._secrets = tuple(s for s in (api_key, api_secret) if s and len(s) >= 4)

        self._client = Client(
            api_key,
            api_secret,
            requests_params={"timeout": self.timeout},
            ping=False,
        )
        self._client.FUTURES_URL = f"{self.rest_url}/fapi"
        self._client.REQUEST_TIMEOUT = self.timeout
        self._client.REQUEST_RECVWINDOW = self.recv_window
        if self.source_address:
            adapter = _SourceAddressAdapter(self.source_address)
            self._client.session.mount("https://", adapter)
            self._client.session.mount("http://", adapter)

    @classmethod
    def for_account(cls, account: Any, *, priority: str = egress.RECONCILE) -> BinanceFuturesClient:
        """Gateway for an account-like object (``api_key``, ``api_secret`` in plain text, optional ``use_testnet``,
        ``name``, ``pk``); URLs, timeout and recvWindow come from Django settings when configured; the source address
        from the egress pool (``BINANCE_SOURCE_ADDRESSES``, by account id)."""
        use_testnet = bool(getattr(account, "use_testnet", False))
        if use_testnet:
            rest_url = _setting("BINANCE_FUTURES_TESTNET_REST_URL", DEFAULT_TESTNET_REST_URL)
        else:
            rest_url = _setting("BINANCE_FUTURES_REST_URL", DEFAULT_REST_URL)
        label = f"{getattr(account, 'name', '') or 'account'}#{getattr(account, 'pk', '?')}"
        return cls(
            account.api_key,
            account.api_secret,
            rest_url=rest_url,
            timeout=_setting("BINANCE_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT),
            recv_window=_setting("BINANCE_RECV_WINDOW", DEFAULT_RECV_WINDOW),
            account_label=label,
            source_address=egress.source_address_for(getattr(account, "pk", None)),
            priority=priority,
        )

    def __repr__(self) -> str:
        return f"<BinanceFuturesClient {self.account_label} {self.rest_url}>"

    def close(self) -> None:
        """Close the keep-alive session."""
        self._client.session.close()

    def __enter__(self) -> BinanceFuturesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ facts about the last responses

    @property
    def used_weight(self) -> int:
        """``X-MBX-USED-WEIGHT-1M`` of the latest response that carried it (0 before any)."""
        return self._used_weight or 0

    # ------------------------------------------------------------------ orders

    def get_order(self, symbol: str, order_id: int | str) -> dict | None:
        """GET /fapi/v1/order by orderId → the order, or None when Binance says it does not exist (-2013)."""
        return self._get_order_or_none({"symbol": symbol, "orderId": order_id})

    def get_order_by_client_order_id(self, symbol: str, client_order_id: str) -> dict | None:
        """GET /fapi/v1/order by origClientOrderId → the order, or None (-2013)."""
        return self._get_order_or_none({"symbol": symbol, "origClientOrderId": client_order_id})

    def _get_order_or_none(self, params: dict) -> dict | None:
        try:
            order = self._call("get", "order", params)
        except OrderNotFound:
            return None
        if not isinstance(order, dict):  # e.g. a 2xx "null" from an intermediary: None would mean "-2013"
            raise self._unusable_answer("GET /fapi/v1/order", order)
        return order

    def place_order(
        self,
        symbol: str,
        side: str,
        quantity: Decimal | str | int,
        *,
        order_type: str = "LIMIT",
        price: Decimal | str | int | None = None,
        client_order_id: str | None = None,
        time_in_force: str = "GTC",
        reduce_only: bool = False,
        position_side: str | None = None,
    ) -> dict:
        """POST /fapi/v1/order → Binance's answer.

        If it raises with ``execution_unknown`` True (503 "Unknown error…", timeout after sending, …) the order
        **may exist**: keep the trade pending and look it up by ``exc.client_order_id``. Without a
        ``client_order_id`` one is generated, so there is always something to look up.
        """
        order_type = order_type.upper()
        params: dict[str, Any] = {
            "symbol": symbol,
            "side": side.upper(),
            "type": order_type,
            "quantity": _decimal_str(quantity, "quantity"),
            "newClientOrderId": client_order_id or new_client_order_id(),
        }
        if order_type == "LIMIT":
            if price is None:
                raise ValueError("a LIMIT order needs a price")
            params["price"] = _decimal_str(price, "price")
            params["timeInForce"] = time_in_force
        elif price is not None:
            raise ValueError(f"a {order_type} order takes no price")
        if reduce_only:
            params["reduceOnly"] = "true"
        if position_side is not None:  # hedge mode: LONG / SHORT, mandatory there (-4061 otherwise)
            params["positionSide"] = position_side
        try:
            return self._call("post", "order", params)
        except ExchangeError as exc:
            exc.client_order_id = params["newClientOrderId"]
            raise

    def place_algo_order(
        self,
        symbol: str,
        side: str,
        order_type: str,
        *,
        trigger_price: Decimal | str | int,
        quantity: Decimal | str | int | None = None,
        price: Decimal | str | int | None = None,
        client_algo_id: str | None = None,
        reduce_only: bool = False,
        close_position: bool = False,
        position_side: str | None = None,
    ) -> dict:
        """POST /fapi/v1/algoOrder (algoType CONDITIONAL): a stop or take-profit in Binance's Algo Service, which
        ``/fapi/v1/order`` refuses since 2025-12 (-4120). When triggered it places an ordinary order whose orderId
        is the algo order's ``actualOrderId``."""
        params: dict[str, Any] = {
            "algoType": "CONDITIONAL",
            "symbol": symbol,
            "side": side.upper(),
            "type": order_type.upper(),
            "triggerPrice": _decimal_str(trigger_price, "trigger_price"),
            "clientAlgoId": client_algo_id or new_client_order_id(),
        }
        if quantity is not None:
            params["quantity"] = _decimal_str(quantity, "quantity")
        if price is not None:
            params["price"] = _decimal_str(price, "price")
        if reduce_only:
            params["reduceOnly"] = "true"
        if close_position:
            params["closePosition"] = "true"
        if position_side is not None:
            params["positionSide"] = position_side
        return self._call("post", "algoOrder", params)

    def get_algo_order(self, *, algo_id: int | None = None, client_algo_id: str | None = None) -> dict | None:
        """GET /fapi/v1/algoOrder → the algo order, or None (-2013)."""
        params = {"algoId": algo_id} if algo_id is not None else {"clientAlgoId": client_algo_id}
        try:
            return self._call("get", "algoOrder", params)
        except OrderNotFound:
            return None

    def cancel_algo_order(self, *, algo_id: int | None = None, client_algo_id: str | None = None) -> dict:
        """DELETE /fapi/v1/algoOrder."""
        params = {"algoId": algo_id} if algo_id is not None else {"clientAlgoId": client_algo_id}
        return self._call("delete", "algoOrder", params, force_params=True)

    def cancel_order(
        self, symbol: str, *, order_id: int | str | None = None, client_order_id: str | None = None
    ) -> dict:
        """DELETE /fapi/v1/order → the cancelled order. -2011 (not open any more: filled, cancelled, unknown)
        raises UnknownOrder — verify the order's state, it may have just filled."""
        if order_id is None and client_order_id is None:
            raise ValueError("cancel_order needs order_id or client_order_id")
        params: dict[str, Any] = {"symbol": symbol}
        if order_id is not None:
            params["orderId"] = order_id
        if client_order_id is not None:
            params["origClientOrderId"] = client_order_id
        return self._call("delete", "order", params, force_params=True)

    def get_open_orders(self, symbol: str | None = None) -> list[dict]:
        """GET /fapi/v1/openOrders (weight 1 with a symbol, 40 without)."""
        return self._call("get", "openOrders", {"symbol": symbol} if symbol else {})

    def get_all_orders(self, symbol: str, start_time: int | None = None, end_time: int | None = None) -> list[dict]:
        """Every order of ``symbol`` created in [start_time, end_time] (ms), sorted by orderId.

        GET /fapi/v1/allOrders (weight 5 per page) returns at most 1000 orders and refuses spans of 7 days or more.
        Longer spans are split into consecutive windows of 7 d - 1 ms; a full page is followed by the next one from
        the last orderId + 1 ("orders >= that orderId", oldest first) within the same window. With no ``end_time``
        the last window has no endTime, so a local clock behind the exchange's cannot hide the newest orders.

        With neither bound: one call for Binance's default (the most recent orders of the last 7 days); only if
        that page is full, the gateway syncs its clock with the exchange and pages through the last 7 days.
        """
        if start_time is None and end_time is None:
            page = self._orders_page({"symbol": symbol, "limit": ALL_ORDERS_PAGE_LIMIT})
            if len(page) < ALL_ORDERS_PAGE_LIMIT:
                return sorted(page, key=lambda order: int(order["orderId"]))
            self.sync_time()
            start_time = self.exchange_time_ms() - ALL_ORDERS_MAX_WINDOW_MS
        orders: dict[int, dict] = {}
        for window_start, window_end in self._all_orders_windows(start_time, end_time):
            from_order_id: int | None = None
            while True:
                params: dict[str, Any] = {"symbol": symbol, "startTime": window_start, "limit": ALL_ORDERS_PAGE_LIMIT}
                if window_end is not None:
                    params["endTime"] = window_end
                if from_order_id is not None:
                    params["orderId"] = from_order_id
                page = self._orders_page(params)
                for order in page:
                    orders[int(order["orderId"])] = order
                if len(page) < ALL_ORDERS_PAGE_LIMIT:
                    break
                next_id = max(int(order["orderId"]) for order in page) + 1
                if from_order_id is not None and next_id <= from_order_id:
                    break  # an exchange that ignored orderId would loop forever; what we have is all we get
                from_order_id = next_id
        return [orders[order_id] for order_id in sorted(orders)]

    def _orders_page(self, params: dict[str, Any]) -> list[dict]:
        """One allOrders page, checked: a list of orders with integer orderIds, or ExchangeUnavailable (a 2xx body
        that is not Binance's answer — an intermediary's JSON — must not surface as a KeyError or TypeError)."""
        page = self._call("get", "allOrders", params)
        if isinstance(page, list) and all(isinstance(order, dict) and _is_int(order.get("orderId")) for order in page):
            return page
        raise self._unusable_answer("GET /fapi/v1/allOrders", page)

    def _unusable_answer(self, endpoint: str, answer: Any) -> ExchangeUnavailable:
        """A 2xx whose JSON is not the shape Binance answers with: someone in between answered."""
        status = getattr(self._client.response, "status_code", None)
        error = ExchangeUnavailable(
            None, f"unusable answer: {self._scrub(str(answer)[:120])}", status, endpoint=endpoint
        )
        logger.warning("binance %s %s", self.account_label, error)
        return error

    def _all_orders_windows(self, start_time: int | None, end_time: int | None) -> list[tuple[int, int | None]]:
        if start_time is None:  # only end_time: Binance's own default, the 7 days up to it
            if end_time is None:  # get_all_orders settles "neither bound" itself, before the windows
                raise ValueError("start_time or end_time is needed")
            start_time = int(end_time) - ALL_ORDERS_MAX_WINDOW_MS
        open_ended = end_time is None
        last = max(self.exchange_time_ms(), int(start_time)) if end_time is None else int(end_time)
        if last < start_time:
            raise ValueError("start_time is after end_time")
        windows: list[tuple[int, int | None]] = []
        window_start = int(start_time)
        while True:
            window_end = window_start + ALL_ORDERS_MAX_WINDOW_MS
            if window_end >= last:
                windows.append((window_start, None if open_ended else last))
                return windows
            windows.append((window_start, window_end))
            window_start = window_end + 1

    # ------------------------------------------------------------------ account

    def get_positions(self) -> list[dict]:
        """GET /fapi/v3/positionRisk (weight 5): the symbols with a position or open orders, one entry per
        position side, string decimals. (v2 lists every symbol, zeros included; v3 is what Binance and
        python-binance use now.)"""
        return self._call("get", "positionRisk", {}, version=3)

    def get_position_mode(self) -> bool:
        """GET /fapi/v1/positionSide/dual (weight 30): True when the account is in hedge mode ("dualSidePosition"),
        one LONG and one SHORT position per symbol; False in one-way mode."""
        answer = self._call("get", "positionSide/dual", {})
        dual = answer.get("dualSidePosition") if isinstance(answer, dict) else None
        if not isinstance(dual, bool):
            raise self._unusable_answer("GET /fapi/v1/positionSide/dual", answer)
        return dual

    def get_user_trades(
        self,
        symbol: str,
        start_time: int | None = None,
        from_id: int | None = None,
        limit: int = 500,
    ) -> list[dict]:
        """GET /fapi/v1/userTrades (Binance: at most 1000 per call; fromId and startTime are exclusive there)."""
        params: dict[str, Any] = {"symbol": symbol, "limit": limit}
        if start_time is not None:
            params["startTime"] = start_time
        if from_id is not None:
            params["fromId"] = from_id
        return self._call("get", "userTrades", params)

    def get_user_trades_since(self, symbol: str, start_time: int) -> list[dict]:
        """Every fill of ``symbol`` from ``start_time`` (ms) on, oldest first (by id).

        GET /fapi/v1/userTrades (weight 5) answers at most 1000 rows and 7 days a call, and refuses fromId together
        with a time. So: consecutive windows of 7 d - 1 ms from ``start_time``, the last one open-ended (a local clock
        behind the exchange's cannot hide the newest fills); a full page switches to fromId paging (ids ascending,
        no time bound), which runs through to the newest fill.
        """
        fills: dict[int, dict] = {}
        now = self.exchange_time_ms()
        window_start = int(start_time)
        while True:
            window_end = window_start + USER_TRADES_MAX_WINDOW_MS
            params: dict[str, Any] = {"symbol": symbol, "startTime": window_start, "limit": USER_TRADES_PAGE_LIMIT}
            last_window = window_end >= now
            if not last_window:
                params["endTime"] = window_end
            page = self._fills_page(params)
            fills.update((int(f["id"]), f) for f in page)
            if len(page) >= USER_TRADES_PAGE_LIMIT:
                from_id = max(int(f["id"]) for f in page) + 1
                while True:
                    page = self._fills_page({"symbol": symbol, "fromId": from_id, "limit": USER_TRADES_PAGE_LIMIT})
                    fills.update((int(f["id"]), f) for f in page)
                    if len(page) < USER_TRADES_PAGE_LIMIT:
                        break
                    next_id = max(int(f["id"]) for f in page) + 1
                    if next_id <= from_id:
                        break  # an exchange that ignored fromId would loop forever
                    from_id = next_id
                break
            if last_window:
                break
            window_start = window_end + 1
        return [fills[i] for i in sorted(fills)]

    def _fills_page(self, params: dict[str, Any]) -> list[dict]:
        page = self._call("get", "userTrades", params)
        if isinstance(page, list) and all(isinstance(f, dict) and _is_int(f.get("id")) for f in page):
            return page
        raise self._unusable_answer("GET /fapi/v1/userTrades", page)

    # ------------------------------------------------------------------ user-data stream

    def create_listen_key(self) -> str:
        """POST /fapi/v1/listenKey (API key, no signature). Binance returns the account's current key if one is
        still valid, extending it. There is deliberately no ``close_listen_key``: the key is one per account, shared
        with every other consumer of the API key (the bot's own stream), and a DELETE closes all of their sockets."""
        return self._call("post", "listenKey", {}, signed=False)["listenKey"]

    def keepalive_listen_key(self, listen_key: str) -> None:
        """PUT /fapi/v1/listenKey; every < 60 min. -1125 (or a 404 at the gateway) → ListenKeyExpired."""
        self._call("put", "listenKey", {"listenKey": listen_key}, signed=False)

    # ------------------------------------------------------------------ time

    def exchange_time_ms(self) -> int:
        """Our best idea of the exchange's clock: local clock + the process's shared offset (see ExchangeClock)."""
        return int(time.time() * 1000 + EXCHANGE_CLOCK.offset_ms(self.rest_url))

    def sync_time(self) -> int:
        """GET /fapi/v1/time (weight 1) → the process's offset to this exchange's clock, for every gateway. Returns
        it in ms. Runs by itself before a signed call when the offset is unknown, stale or just caused a -1021."""
        sent = time.time() * 1000
        answer = self._call("get", "time", {}, signed=False)
        received = time.time() * 1000
        if not isinstance(answer, dict) or not _is_int(answer.get("serverTime")):
            raise self._unusable_answer("GET /fapi/v1/time", answer)
        offset = int(int(answer["serverTime"]) - (sent + received) / 2)
        EXCHANGE_CLOCK.record(self.rest_url, offset)
        logger.debug("binance %s clock offset %d ms", self.account_label, offset)
        return offset

    def _sync_time_if_due(self) -> None:
        if not EXCHANGE_CLOCK.due(self.rest_url):
            return
        try:
            self.sync_time()
        except TransientExchangeError as exc:  # the call itself will say whether the exchange answers
            logger.warning(
                "binance %s clock sync failed, using offset %d ms: %s",
                self.account_label,
                EXCHANGE_CLOCK.offset_ms(self.rest_url),
                exc,
            )

    # ------------------------------------------------------------------ the one HTTP path

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        *,
        signed: bool = True,
        version: int = 1,
        force_params: bool = False,
    ) -> Any:
        if not signed:
            return self._call_once(method, path, params, signed=False, version=version, force_params=force_params)
        self._sync_time_if_due()
        try:
            return self._call_once(method, path, params, signed=True, version=version, force_params=force_params)
        except ClockSkew:
            # -1021: refused before being processed, nothing executed (see the module docstring): re-sync, send
            # once more — also a placement. A second -1021 surfaces (ClockSkew, transient: the task may retry).
            EXCHANGE_CLOCK.invalidate(self.rest_url)
            self._sync_time_if_due()
            return self._call_once(method, path, params, signed=True, version=version, force_params=force_params)

    def _call_once(
        self, method: str, path: str, params: dict[str, Any], *, signed: bool, version: int, force_params: bool
    ) -> Any:
        if signed:
            self._client.timestamp_offset = EXCHANGE_CLOCK.offset_ms(self.rest_url)
        endpoint = f"{method.upper()} /fapi/v{version}/{path}"
        self._draw_weight(method.upper(), path, params, endpoint)
        kwargs: dict[str, Any] = {"data": dict(params)}
        if force_params:
            kwargs["force_params"] = True
        self._client.response = None
        self.http_calls += 1
        started = time.monotonic()
        try:
            result = self._client._request_futures_api(method, path, signed, version, **kwargs)
        except BinanceAPIException as exc:
            error = self._error_from_response(exc.response, method, endpoint)
        except BinanceRequestException:  # a 2xx whose body is not JSON
            error = self._error_from_response(self._client.response, method, endpoint)
        except requests.RequestException as exc:
            error = error_from_transport(
                exc, method=method, endpoint=endpoint, host=self._host, timeout=self.timeout, scrub=self._scrub
            )
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
            # python-binance chokes on some bodies (e.g. a JSON string or list as an error body, JSON nested deeper
            # than the json module parses); if a response arrived, judge it ourselves, otherwise it is a bug and
            # should surface as one.
            if self._client.response is None:
                raise
            error = self._error_from_response(self._client.response, method, endpoint)
        else:
            self._note_response(self._client.response)
            logger.debug(
                "binance %s %s -> %s in %.0f ms (used weight %s)",
                self.account_label,
                endpoint,
                getattr(self._client.response, "status_code", "?"),
                (time.monotonic() - started) * 1000,
                self._used_weight,
            )
            return result

        self._note_response(self._client.response)
        if isinstance(error, RateLimited) and error.status in (429, 418) and error.code != CODE_TOO_MANY_ORDERS:
            self._mark_limited(error)  # the IP's limits; -1015 is the account's ORDERS limit, not the IP's
        if isinstance(error, ClockSkew):
            EXCHANGE_CLOCK.invalidate(self.rest_url)
        level = logging.WARNING if isinstance(error, TransientExchangeError) else logging.DEBUG
        logger.log(
            level,
            "binance %s %s failed in %.0f ms: %s: %s",
            self.account_label,
            endpoint,
            (time.monotonic() - started) * 1000,
            type(error).__name__,
            error,
        )
        # `from None`: the python-binance/requests exception holds the request, whose headers carry the API key.
        raise error from None

    def _note_response(self, response: requests.Response | None) -> None:
        if response is None:
            return
        weight = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if weight is not None:
            try:
                self._used_weight = int(weight)
            except ValueError:
                return
            try:
                self._shared_budget().record_used(self.egress, self._used_weight, self.exchange_time_ms())
            except Exception as exc:  # noqa: BLE001 — the answer is in; a store hiccup must not turn it into a failure
                logger.warning("binance %s weight budget not updated: %s", self.account_label, exc)

    # ------------------------------------------------------------------ the fleet-wide weight budget

    def _shared_budget(self) -> egress.WeightBudget:
        if self._budget is None:
            self._budget = egress.shared_budget()
        return self._budget

    def weight_limit(self) -> int:
        """REQUEST_WEIGHT per minute of this exchange: BINANCE_WEIGHT_LIMIT, else exchangeInfo's (cached per process
        for an hour; 2,400 until known and for a minute after a failed fetch)."""
        configured = _setting("BINANCE_WEIGHT_LIMIT", None)
        if configured:
            return int(configured)
        known = egress.EXCHANGE_LIMITS.get(self.rest_url)
        if known is not None:
            return known
        egress.EXCHANGE_LIMITS.record(self.rest_url, egress.DEFAULT_WEIGHT_LIMIT, ttl_sec=60)  # also stops recursion
        try:
            info = self._call_once("get", "exchangeInfo", {}, signed=False, version=1, force_params=False)
        except ExchangeError as exc:
            logger.warning(
                "binance %s exchangeInfo unavailable, assuming %d weight/min: %s",
                self.account_label,
                egress.DEFAULT_WEIGHT_LIMIT,
                exc,
            )
            return egress.DEFAULT_WEIGHT_LIMIT
        limit = egress.weight_limit_from_exchange_info(info) or egress.DEFAULT_WEIGHT_LIMIT
        egress.EXCHANGE_LIMITS.record(self.rest_url, limit)
        return limit

    def _draw_weight(self, method: str, path: str, params: dict[str, Any], endpoint: str) -> None:
        """Take the route's weight from the egress's shared budget, or raise RateLimited without sending."""
        weight = ROUTE_WEIGHTS.get((method, path), 1)
        if path == "openOrders" and not params.get("symbol"):
            weight = ORDERS_OPEN_NO_SYMBOL_WEIGHT
        priority = ROUTE_PRIORITIES.get((method, path), self.priority)
        cap = int(self.weight_limit() * egress.share_of(priority))
        try:
            refusal = self._shared_budget().acquire(self.egress, weight, cap, self.exchange_time_ms())
        except Exception as exc:  # noqa: BLE001 — Redis down, SQLite locked too long: whatever the store's failure
            # Fail closed: without the fleet's count, sending could take the IP past its limit (and a ban is for
            # every account on it); nothing is sent and the caller retries, as after a 429.
            logger.warning("binance %s %s: weight budget unavailable, not sent: %s", self.account_label, endpoint, exc)
            raise RateLimited(
                None,
                f"not sent: the weight budget of {self.egress} is unavailable",
                None,
                endpoint=endpoint,
                retry_after=BUDGET_UNAVAILABLE_RETRY_SEC,
            ) from None
        if refusal is None:
            return
        if refusal.reason == "limited":
            message = (
                f"not sent: {self.egress} is {'banned' if refusal.banned else 'rate limited'} for "
                f"{refusal.retry_after:.1f}s more (seen by this fleet)"
            )
        else:
            message = f"not sent: {self.egress} has used {priority}'s share ({cap}) of this minute's weight"
        error = RateLimited(
            None, message, None, endpoint=endpoint, retry_after=max(refusal.retry_after, 0.001), banned=refusal.banned
        )
        logger.warning("binance %s %s: %s", self.account_label, endpoint, message)
        raise error

    def _mark_limited(self, error: RateLimited) -> None:
        until = self.exchange_time_ms() + int(error.retry_after * 1000)
        try:
            self._shared_budget().mark_limited(self.egress, until, error.banned)
        except Exception as exc:  # noqa: BLE001 — the 429/418 itself still surfaces to the caller
            logger.error("binance %s could not share %s on %s: %s", self.account_label, error.status, self.egress, exc)
        logger.warning(
            "binance %s %s on %s: every caller waits %.0fs",
            self.account_label,
            error.status,
            self.egress,
            error.retry_after,
        )

    def _error_from_response(self, response: requests.Response | None, method: str, endpoint: str) -> ExchangeError:
        return error_from_response(
            response, method=method, endpoint=endpoint, exchange_now_ms=self.exchange_time_ms(), scrub=self._scrub
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text


CLIENT_ORDER_ID_PREFIX = "tradeops-"


def new_client_order_id() -> str:
    """A fresh client order id Binance accepts (``^[.A-Z:/a-z0-9_-]{1,36}$``)."""
    return f"{CLIENT_ORDER_ID_PREFIX}{uuid.uuid4().hex[:24]}"


def client_order_id_for(key: str) -> str:
    """The client order id for `key` (e.g. a Celery task id), in new_client_order_id's format: the same key always
    gives the same id, so work redone under that key finds what the first attempt created."""
    return f"{CLIENT_ORDER_ID_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def _setting(name: str, default: Any) -> Any:
    from django.conf import settings

    if not settings.configured:
        return default
    value = getattr(settings, name, None)
    return default if value in (None, "") else value


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _decimal_str(value: Decimal | str | int, what: str) -> str:
    if isinstance(value, float) or isinstance(value, bool):
        raise TypeError(f"{what} must be a Decimal, str or int, never float: {value!r}")
    number = Decimal(value)
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{what} must be a positive number: {value!r}")
    return format(number, "f")
