"""Helpers for the sandbox tests."""

from __future__ import annotations

import time

from binance.client import Client
from requests.adapters import HTTPAdapter


def binance_client(handle, account, **kwargs) -> Client:
    """python-binance's own Client, pointed at the sandbox the way the project's gateway does it."""
    client = Client(account["api_key"], account["api_secret"], ping=False, **kwargs)
    client.FUTURES_URL = handle.rest_url + "/fapi"
    return client


def limit_buy(client, qty="0.010", price="50000", **kwargs):
    return client.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity=qty, price=price, **kwargs
    )


def sync_clock(client: Client) -> int:
    """What a client of Binance does once the exchange's clock is not its own: GET /fapi/v1/time and stamp signed
    requests in the exchange's time (python-binance adds `timestamp_offset`). Returns the offset in ms."""
    sent = time.time() * 1000
    server = client.futures_time()["serverTime"]
    client.timestamp_offset = int(server - (sent + time.time() * 1000) / 2)
    return client.timestamp_offset


class _SourceAddressAdapter(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self._source = (address, 0)
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)


def from_address(client: Client, address: str) -> Client:
    """Send the client's requests from `address` (127.0.0.2, 127.0.0.3, …: each loopback alias is its own "IP")."""
    adapter = _SourceAddressAdapter(address)
    client.session.mount("http://", adapter)
    client.session.mount("https://", adapter)
    return client
