"""Exceptions raised by the Binance gateway (`trades.binance_client`).

The services act on a small set of outcomes, not on Binance's hundreds of error codes:

    ExchangeError(code, message, status)       anything Binance rejected that has no better name
    ├── OrderNotFound         -2013  the order does not exist (for this account's keys)
    ├── UnknownOrder          -2011  cancel of an order that is not open (already filled/cancelled/unknown)
    ├── ListenKeyExpired      -1125  the listenKey is gone; create a new one and reconnect
    └── TransientExchangeError       worth retrying later (the task owns the retry policy; TRANSIENT_ERRORS)
        ├── RateLimited       HTTP 429 / 418 / -1003; ``retry_after`` seconds to wait
        ├── ExchangeUnavailable  5xx, timeouts, connection errors, unusable bodies
        └── ClockSkew         -1021  timestamp outside recvWindow: not executed; the gateway re-syncs and resends
                                     once, so this surfaces only when that failed too

``execution_unknown`` (on every ExchangeError, normally False): True when a request may have been executed by
Binance although we got no usable answer — Binance's 503 "Unknown error, please check your request or try again
later.", -1007, HTTP 408 on a request that changes state (whatever code its body carries), and timeouts / dropped connections / 5xx gateway pages on requests that change state. A placement
that raised with ``execution_unknown=True`` **may have gone through**: the caller must keep the trade pending and
reconcile it by its client order id (``exc.client_order_id`` on errors from ``place_order``), never mark it failed.

``error_from_response`` / ``error_from_transport`` (bottom) are the one place that picks the exception for an HTTP
answer or a transport failure; the gateway calls them.

The exceptions carry no response or request object (those hold the API key in their headers) and are raised
``from None``, so nothing reachable from them — str, repr, traceback, pickle, Celery's JSON result — shows a key.
They are reconstructible from ``args`` (code, message, status), which is what Celery's JSON serializer keeps.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable
from typing import Any

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

TRANSIENT_ERRORS: tuple[type[Exception], ...]  # set at the bottom; for Celery's ``autoretry_for``


class ExchangeError(Exception):
    """Binance said no, or said something we cannot use. ``code`` is Binance's error code (None when the body had
    none), ``message`` its text (or a short excerpt of a non-JSON body), ``status`` the HTTP status (None when no
    response arrived)."""

    def __init__(
        self,
        code: int | None = None,
        message: str = "",
        status: int | None = None,
        *,
        endpoint: str = "",
        execution_unknown: bool = False,
        client_order_id: str | None = None,
    ) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status
        self.endpoint = endpoint
        self.execution_unknown = execution_unknown
        self.client_order_id = client_order_id

    def __str__(self) -> str:
        parts = [f"code={self.code}" if self.code is not None else "code=-", f"status={self.status or '-'}"]
        if self.endpoint:
            parts.append(self.endpoint)
        if self.execution_unknown:
            parts.append("execution status UNKNOWN")
        if self.client_order_id:
            parts.append(f"clientOrderId={self.client_order_id}")
        return f"{self.message} ({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.status!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the keyword attributes (retry_after, execution_unknown, …) across pickling.
        return (type(self), (self.code, self.message, self.status), dict(self.__dict__))


class OrderNotFound(ExchangeError):
    """-2013 "Order does not exist." — also right after placing (Binance is eventually consistent), and for an
    order that belongs to another account's keys."""


class UnknownOrder(ExchangeError):
    """-2011 "Unknown order sent." on cancel: the order is not open any more (it may just have filled — verify)."""


class ListenKeyExpired(ExchangeError):
    """-1125 "This listenKey does not exist." on keepalive: create a new listenKey and reconnect the stream."""


class TransientExchangeError(ExchangeError):
    """The exchange could not answer now; retrying later is the right move."""


class RateLimited(TransientExchangeError):
    """HTTP 429 (request weight/order rate exceeded), 418 (IP banned for repeatedly ignoring 429) or -1003.

    ``retry_after`` (seconds, float) comes from the ``Retry-After`` header when present, else from the "banned
    until <ms>" timestamp in Binance's message, else a default: 60 s for 429/-1003 (one full weight window) and
    120 s for 418 (Binance's shortest ban; bans escalate up to 3 days, so waiting less only extends it).
    ``banned`` is True for 418.
    """

    def __init__(self, *args: Any, retry_after: float = 60.0, banned: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after
        self.banned = banned

    def __str__(self) -> str:
        return f"{super().__str__()} retry after {self.retry_after:g}s"


class ExchangeUnavailable(TransientExchangeError):
    """5xx, timeouts, connection errors, bodies that are not Binance's JSON (HTML error pages).

    Check ``execution_unknown`` before concluding anything about a state-changing request.
    """


class ClockSkew(TransientExchangeError):
    """-1021 timestamp outside recvWindow. The request was rejected (not executed). The gateway has already re-synced
    the process's clock offset and resent once; this is the second refusal."""


TRANSIENT_ERRORS = (RateLimited, ExchangeUnavailable, ClockSkew)


# ---------------------------------------------------------------------------------------------------------------------
# Which exception for which answer.

CODE_ORDER_NOT_FOUND = -2013
CODE_UNKNOWN_ORDER = -2011
CODE_LISTEN_KEY_EXPIRED = -1125
CODE_CLOCK_SKEW = -1021
CODE_TOO_MANY_REQUESTS = -1003
# -1001 "Internal error; unable to process your request" and -1008 "server overloaded": not executed, retry later.
# -1006 "unexpected response from the message bus" and -1007 "timeout waiting for backend": execution UNKNOWN.
UNAVAILABLE_CODES = frozenset({-1001, -1006, -1007, -1008})
EXECUTION_UNKNOWN_CODES = frozenset({-1006, -1007})
FAILED_CODES = frozenset({-1001, -1008})
# 5xx messages Binance documents as "this request failed" (safe to resend), unlike 503 "Unknown error, …".
_FAILED_5XX_MESSAGES = ("service unavailable", "internal error; unable to process your request")

RATE_LIMIT_DEFAULT_SEC = 60.0  # 429 / -1003 without Retry-After: one full 1-minute weight window
IP_BAN_DEFAULT_SEC = 120.0  # 418 without Retry-After: Binance's shortest IP ban (they escalate up to 3 days)
# Binance's longest ban. A longer (or infinite) wait from a header or message is junk, and an infinite countdown
# would crash Celery's retry instead of rescheduling.
MAX_RETRY_AFTER_SEC = 3 * 86400.0

_BANNED_UNTIL = re.compile(r"banned until (\d{12,14})")
_WHITESPACE = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]*>")
_EXCERPT_CHARS = 200


def _same(text: str) -> str:
    return text


def error_from_response(
    response: requests.Response | None,
    *,
    method: str,
    endpoint: str,
    exchange_now_ms: int | None = None,
    scrub: Callable[[str], str] = _same,
) -> ExchangeError:
    """The exception for a non-2xx answer (or a 2xx whose body is not JSON). Never raises on odd bodies."""
    if response is None:  # python-binance raised before any response existed; nothing better to say
        return ExchangeUnavailable(None, "no response", None, endpoint=endpoint)
    status = response.status_code
    code: int | None = None
    message: str | None = None
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
        body = None
    if isinstance(body, dict):
        try:
            code = int(body["code"]) if body.get("code") is not None else None
        except (TypeError, ValueError, OverflowError):  # OverflowError: {"code": 1e999} is inf
            code = None
        if body.get("msg") is not None:
            message = str(body["msg"])
    if message is None:
        message = _excerpt(response.text or "") or f"HTTP {status} with an empty body"
    message = scrub(message)
    mutating = method.lower() != "get"
    kw: dict[str, Any] = {"endpoint": endpoint}

    if status == 408:
        # Binance: "HTTP 408 return code is used when a timeout has occurred while waiting for a response from the
        # backend server" (USDⓈ-M General Info). The request may or may not have reached the matching engine,
        # whatever code the body carries (-1007, a -2013 from a half-done look-up, none): an order-changing request
        # has an unknown outcome — keep the trade pending and look the order up by its client order id.
        return ExchangeUnavailable(code, message, status, execution_unknown=mutating, **kw)

    if status in (418, 429) or code == CODE_TOO_MANY_REQUESTS:
        banned = status == 418
        retry_after = _retry_after(response.headers.get("Retry-After"), message, banned, exchange_now_ms)
        return RateLimited(code, message, status, retry_after=retry_after, banned=banned, **kw)
    if code == CODE_ORDER_NOT_FOUND:
        return OrderNotFound(code, message, status, **kw)
    if code == CODE_UNKNOWN_ORDER:
        return UnknownOrder(code, message, status, **kw)
    if code == CODE_LISTEN_KEY_EXPIRED or (status == 404 and method.lower() == "put" and "listenKey" in endpoint):
        return ListenKeyExpired(code, message, status, **kw)
    if code == CODE_CLOCK_SKEW:
        return ClockSkew(code, message, status, **kw)

    said_unknown = code in EXECUTION_UNKNOWN_CODES or message.lower().startswith("unknown error")
    if status >= 500 or code in UNAVAILABLE_CODES:
        said_failed = code in FAILED_CODES or message.lower().startswith(_FAILED_5XX_MESSAGES)
        # On a state-changing request, a 5xx Binance did not explicitly call a failure may have been executed
        # (a gateway's 502/504 page says nothing about the matching engine).
        unknown = said_unknown or (mutating and not said_failed)
        return ExchangeUnavailable(code, message, status, execution_unknown=unknown, **kw)
    if 200 <= status < 300:  # a 2xx that is not JSON: something in between answered, not Binance
        return ExchangeUnavailable(code, f"unusable response body: {message}", status, execution_unknown=mutating, **kw)
    return ExchangeError(code, message, status, execution_unknown=said_unknown, **kw)


def error_from_transport(
    exc: requests.RequestException,
    *,
    method: str,
    endpoint: str,
    host: str,
    timeout: float,
    scrub: Callable[[str], str] = _same,
) -> ExchangeUnavailable:
    """The exception for a request that got no answer: timeout, refused or dropped connection."""
    never_sent = _never_sent(exc)
    if never_sent:
        what = "could not connect"
    elif isinstance(exc, requests.Timeout):
        what = f"no answer within {timeout:g}s"
    else:
        what = "connection lost before an answer"
    # The host and the chain of causes, not str(exc): that embeds the whole signed URL.
    message = scrub(f"{what} to {host} ({_cause_names(exc)})")
    return ExchangeUnavailable(
        None, message, None, endpoint=endpoint, execution_unknown=method.lower() != "get" and not never_sent
    )


def _retry_after(header: str | None, message: str, banned: bool, exchange_now_ms: int | None) -> float:
    return min(_retry_after_unbounded(header, message, banned, exchange_now_ms), MAX_RETRY_AFTER_SEC)


def _retry_after_unbounded(header: str | None, message: str, banned: bool, exchange_now_ms: int | None) -> float:
    if header:
        try:
            seconds = float(header)
        except ValueError:
            try:  # Retry-After may also be an HTTP date
                return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
            except (TypeError, ValueError, OverflowError):
                pass
        else:
            if math.isfinite(seconds):  # "inf" / "nan" are junk, not a wait
                return max(0.0, seconds)
    match = _BANNED_UNTIL.search(message)  # -1003 "... IP banned until 1700000000000 ..."
    if match:
        now_ms = exchange_now_ms if exchange_now_ms is not None else time.time() * 1000
        return max(0.0, (int(match.group(1)) - now_ms) / 1000)
    return IP_BAN_DEFAULT_SEC if banned else RATE_LIMIT_DEFAULT_SEC


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (could not connect)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _cause_names(exc: BaseException) -> str:
    names = [type(exc).__name__]
    reason: Any = exc.args[0] if exc.args else None
    for _ in range(5):
        if not isinstance(reason, BaseException):
            break
        names.append(type(reason).__name__)
        reason = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
    return " > ".join(dict.fromkeys(names))


def _excerpt(text: str) -> str:
    """A short, single-line excerpt of a body (HTML tags dropped) for messages and logs."""
    flat = _WHITESPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    return flat if len(flat) <= _EXCERPT_CHARS else flat[: _EXCERPT_CHARS - 1] + "…"
