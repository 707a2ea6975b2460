"""How a service gets a Binance client: the one the caller passed in, or the account's own for one block, with the
egress priority its calls may use (trades/egress.py). Binance is called only through `BinanceFuturesClient`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.models import Account


@contextmanager
def gateway(
    account: Account, client: BinanceFuturesClient | None = None, *, priority: str = egress.RECONCILE
) -> Iterator[BinanceFuturesClient]:
    """The client a caller passed in (theirs to close), or the account's own for this block, closed after it.
    `priority`: which share of the egress IP's weight budget the calls may use (trades/egress.py)."""
    if client is not None:
        yield client
        return
    with BinanceFuturesClient.for_account(account, priority=priority) as own:
        yield own
