"""Property: whatever answer (status, headers, body) or transport failure comes back, the gateway turns it into one
of trades.exceptions' ExchangeErrors — never another exception, never one that shows the account's keys.
`error_from_response` / `error_from_transport` directly, and the whole python-binance path
(`BinanceFuturesClient._call`) with requests' session replaced by canned answers.
"""

from __future__ import annotations

import email.utils
import json
import math
import pickle
from datetime import UTC, datetime

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

from trades.binance_client import BinanceFuturesClient
from trades.egress import NoBudget
from trades.exceptions import (
    MAX_RETRY_AFTER_SEC,
    ExchangeError,
    ExchangeUnavailable,
    RateLimited,
    TransientExchangeError,
    error_from_response,
    error_from_transport,
)

from .profiles import examples
from .strategies import json_values, weird_numbers, weird_values

# Binance codes that say what happened whatever the HTTP status (an order does not exist, is not open, the
# listenKey is gone): they win over a 5xx.
ANSWERED_CODES = (-2013, -2011, -1125)
KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
api_keys = st.text(KEY_ALPHABET, min_size=64, max_size=64)  # Binance's API keys and secrets: 64 alphanumerics

statuses = st.sampled_from([200, 201, 204, 400, 401, 403, 404, 408, 409, 418, 429, 500, 502, 503, 504]) | st.integers(
    100, 599
)
methods = st.sampled_from(["get", "post", "put", "delete"])
endpoints = st.sampled_from(
    [
        "GET /fapi/v1/order",
        "POST /fapi/v1/order",
        "DELETE /fapi/v1/order",
        "PUT /fapi/v1/listenKey",
        "GET /fapi/v3/positionRisk",
        "GET /fapi/v1/allOrders",
    ]
)

http_dates = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
    lambda d: email.utils.format_datetime(d.replace(tzinfo=UTC), usegmt=True)
)
retry_afters = (
    st.none()
    | http_dates
    | weird_numbers
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "0",
            "1",
            "60",
            "-5",
            "1.5",
            "inf",
            "-inf",
            "nan",
            "1e309",
            "1e20",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 -0000",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "tomorrow",
            "0x10",
            " 30 ",
        ]
    )
)
banned_messages = st.builds(
    lambda until, pad: f"Way too much request weight used; IP banned until {until}.{pad}",
    st.integers(0, 10**14 - 1),
    st.text(max_size=10),
)


@st.composite
def bodies(draw, secrets: tuple[str, ...]) -> bytes:
    """Binance's JSON errors (odd codes and messages), other JSON, HTML gateway pages, junk bytes; some carry a
    secret, as a proxy echoing the request might."""
    secret = draw(st.sampled_from(secrets))
    msg = draw(
        st.none()
        | st.text(max_size=60)
        | banned_messages
        | weird_values
        | st.just(f"Signature for {secret} is not valid.")
        | st.just("Unknown error, please check your request")
        | st.just("Service Unavailable.")
        | st.just("Internal error; unable to process your request.")
    )
    code = draw(
        st.none()
        | st.sampled_from([-1000, -1001, -1003, -1006, -1007, -1008, -1021, -1125, -2011, -2013, -2019, -4116])
        | weird_values
        | st.floats()
    )
    kind = draw(st.sampled_from(["binance", "binance", "json", "html", "bytes", "nested", "empty"]))
    if kind == "binance":
        error = {"code": code, "msg": msg}
        for key in draw(st.sets(st.sampled_from(["code", "msg"]))):
            del error[key]  # missing code / msg
        return json.dumps(error, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "html":
        title = draw(st.sampled_from(["502 Bad Gateway", "504 Gateway Time-out", "Access denied", ""]))
        inner = draw(st.text(max_size=300)) + draw(st.sampled_from(["", f"<p>{secret}</p>", f"key={secret}"]))
        return f"<html><head><title>{title}</title></head>\n<body><h1>{title}</h1>{inner}</body></html>".encode(
            draw(st.sampled_from(["utf-8", "latin-1"])), "replace"
        )
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nested":  # deeper than json's recursion limit
        depth = draw(st.integers(1, 200_000))
        return draw(st.sampled_from([b"[", b'{"a":'])) * depth
    return b""


class CannedResponse(requests.Response):
    def __repr__(self):  # what hypothesis prints for a failing example
        return (
            f"<Response {self.status_code} headers={dict(self.headers)!r} encoding={self.encoding!r} "
            f"body={self._content[:120]!r}{'…' if len(self._content) > 120 else ''} ({len(self._content)} bytes)>"
        )


def fake_response(status: int, body: bytes, headers: dict, encoding: str | None) -> requests.Response:
    response = CannedResponse()
    response.status_code = status
    response._content = body
    response.headers = CaseInsensitiveDict(headers)
    response.encoding = encoding
    response.url = "https://fapi.binance.com/fapi/v1/order"
    return response


@st.composite
def responses(draw, secrets: tuple[str, ...]) -> requests.Response:
    headers = {}
    retry_after = draw(retry_afters)
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if draw(st.booleans()):
        headers["X-MBX-USED-WEIGHT-1M"] = draw(st.sampled_from(["0", "1200", "-1", "abc", "1e3", ""]))
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/html", "text/plain; charset=x"]))
    return fake_response(
        draw(statuses), draw(bodies(secrets)), headers, draw(st.sampled_from([None, "utf-8", "latin-1"]))
    )


def assert_well_formed(error, secrets, *, response=None):
    assert isinstance(error, ExchangeError)
    shown = [str(error), repr(error), error.message, *map(str, error.args)]
    for secret in secrets:
        assert all(secret not in text for text in shown), "a key leaked into the error"
    if isinstance(error, RateLimited):
        assert math.isfinite(error.retry_after) and 0 <= error.retry_after <= MAX_RETRY_AFTER_SEC
        assert error.banned == (error.status == 418)
    if response is not None and response.status_code in (418, 429):
        assert isinstance(error, RateLimited)
    elif response is not None and response.status_code >= 500 and error.code not in ANSWERED_CODES:
        assert isinstance(error, TransientExchangeError)
    copy = pickle.loads(pickle.dumps(error))  # Celery keeps it
    assert type(copy) is type(error) and str(copy) == str(error)


def scrubber(secrets):
    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "<redacted>")
        return text

    return scrub


@settings(max_examples=examples(400))
@given(data=st.data(), secrets=st.tuples(api_keys, api_keys), method=methods, endpoint=endpoints)
def test_error_from_response_always_returns_an_exchange_error_without_secrets(data, secrets, method, endpoint):
    response = data.draw(responses(secrets))
    error = error_from_response(
        response, method=method, endpoint=endpoint, exchange_now_ms=1_700_000_000_000, scrub=scrubber(secrets)
    )
    assert_well_formed(error, secrets, response=response)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"code": 1e999}', b'{"code": -Infinity}', b'{"code": NaN}'])
def test_error_from_response_found_bodies(body):
    """Bodies the properties found to raise (RecursionError, OverflowError, ValueError) before the fix."""
    assert_well_formed(error_from_response(fake_response(502, body, {}, None), method="get", endpoint="GET x"), ())


@pytest.mark.parametrize("header", ["inf", "1e309", "nan", "Fri, 31 Dec 9999 23:59:59 GMT", "1e20"])
def test_retry_after_junk_gives_a_finite_bounded_wait(header):
    error = error_from_response(
        fake_response(429, b"{}", {"Retry-After": header}, None), method="get", endpoint="GET x"
    )
    assert_well_formed(error, ())


def transport_errors(url: str):
    pool = None
    new_conn = NewConnectionError(None, f"Failed to establish a new connection: {url}")
    return st.sampled_from(
        [
            requests.ConnectionError(MaxRetryError(pool, url, reason=new_conn)),
            requests.ConnectionError(
                MaxRetryError(pool, url, reason=ProtocolError("Connection aborted.", ConnectionResetError(104, url)))
            ),
            requests.ConnectionError(ProtocolError("Connection aborted.", RemoteDisconnectedLike(url))),
            requests.ConnectTimeout(MaxRetryError(pool, url, reason=ConnectTimeoutError(None, url))),
            requests.ReadTimeout(ReadTimeoutError(pool, url, f"Read timed out. {url}")),
            requests.Timeout(url),
            requests.ConnectionError(url),
            requests.ConnectionError(),
            requests.RequestException(url),
            requests.exceptions.ChunkedEncodingError(url),
            requests.ConnectionError(None),
            requests.ConnectionError(MaxRetryError(pool, url, reason=None)),
        ]
    )


class RemoteDisconnectedLike(ConnectionError):
    pass


@settings(max_examples=examples(200))
@given(
    data=st.data(),
    secrets=st.tuples(api_keys, api_keys),
    method=methods,
    endpoint=endpoints,
    timeout=st.floats(0.001, 1e6),
)
def test_error_from_transport_always_returns_exchange_unavailable_without_the_url(
    data, secrets, method, endpoint, timeout
):
    url = f"https://fapi.binance.com/fapi/v1/order?apiKey={secrets[0]}&signature={secrets[1]}"
    exc = data.draw(transport_errors(url))
    error = error_from_transport(exc, method=method, endpoint=endpoint, host="fapi.binance.com", timeout=timeout)
    assert isinstance(error, ExchangeUnavailable)
    assert_well_formed(error, secrets)
    if method == "get":
        assert not error.execution_unknown


class CannedSession:
    """requests.Session stand-in: every request gets the same canned answer (or raises the canned exception)."""

    def __init__(self, answer):
        self.answer = answer
        self.headers = {}

    def _respond(self, *args, **kwargs):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    get = post = put = delete = _respond

    def close(self):
        pass


@settings(max_examples=examples(300))
@given(
    data=st.data(),
    secrets=st.tuples(api_keys, api_keys),
    call=st.sampled_from(
        [
            "get_order",
            "get_order_by_client_order_id",
            "cancel_order",
            "get_all_orders",
            "get_open_orders",
            "keepalive_listen_key",
        ]
    ),
)
def test_the_gateway_returns_binances_json_or_raises_an_exchange_error(data, secrets, call):
    response = data.draw(responses(secrets))
    with BinanceFuturesClient(
        *secrets, rest_url="https://fapi.example.invalid", account_label="t#1", budget=NoBudget()
    ) as gateway:
        gateway._client.session = CannedSession(response)
        calls = {
            "get_order": lambda: gateway.get_order("BTCUSDT", 1),
            "get_order_by_client_order_id": lambda: gateway.get_order_by_client_order_id("BTCUSDT", "x"),
            "cancel_order": lambda: gateway.cancel_order("BTCUSDT", client_order_id="x"),
            "get_all_orders": lambda: gateway.get_all_orders(
                "BTCUSDT", start_time=1_700_000_000_000, end_time=1_700_000_100_000
            ),
            "get_open_orders": lambda: gateway.get_open_orders("BTCUSDT"),
            "keepalive_listen_key": lambda: gateway.keepalive_listen_key("k"),
        }
        try:
            result = calls[call]()
        except ExchangeError as error:
            assert_well_formed(error, secrets, response=response)
            assert not 200 <= response.status_code < 300 or isinstance(error, ExchangeUnavailable)
            return
        if result is None and call.startswith("get_order"):
            assert json.loads(response.content)["code"] == -2013  # "does not exist" → None, by contract
            return
        assert 200 <= response.status_code < 300, "a non-2xx answer was returned as data"
        if call == "get_all_orders":
            assert isinstance(result, list) and all(isinstance(order, dict) for order in result)


@pytest.mark.parametrize(
    "call, status, body",
    [
        # Found by the gateway property: each escaped as a non-ExchangeError, or returned a wrong meaning.
        ("get_order", 200, b"[" * 2000),  # RecursionError out of python-binance's response.json()
        ("get_order", 400, b"[" * 2000),  # RecursionError out of BinanceAPIException's json.loads
        ("get_order", 200, b"null"),  # returned None, which means "-2013, the order does not exist"
        ("get_all_orders", 200, b'{"code": null, "msg": null}'),  # TypeError: iterating a dict's keys as orders
        ("get_all_orders", 200, b'[{"symbol": "BTCUSDT"}]'),  # KeyError: no orderId
    ],
)
def test_found_gateway_answers(call, status, body):
    response = fake_response(status, body, {}, None)
    with BinanceFuturesClient(
        "k" * 64, "s" * 64, rest_url="https://fapi.example.invalid", budget=NoBudget()
    ) as gateway:
        gateway._client.session = CannedSession(response)
        with pytest.raises(ExchangeError) as raised:
            getattr(gateway, call)("BTCUSDT", **({"order_id": 1} if call == "get_order" else {}))
    assert_well_formed(raised.value, ("k" * 64, "s" * 64), response=response)
