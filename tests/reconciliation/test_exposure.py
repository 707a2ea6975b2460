"""Exposure per account: the position sync records Binance's positions (through the real client, against the
sandbox), and account_exposure sets them beside what our trades hold, per (symbol, position side)."""

from decimal import Decimal

import pytest
from django.utils import timezone

from reconciliation.models import ExchangePosition, OrphanPosition
from reconciliation.positions.last_sync import account_exposure, record_exchange_positions
from reconciliation.services import reconcile_pending, sync_positions_with_binance
from tests.factories import TradeFactory
from tests.helpers import place
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

pytestmark = pytest.mark.django_db


def opened_trade(account, qty: str, side: str = "BUY", symbol: str = "BTCUSDT") -> Trade:
    trade = TradeFactory(account=account, symbol=symbol, side=side, quantity=Decimal(qty), price=None)
    place(trade)  # MARKET: fills at once on the sandbox
    reconcile_pending(account)
    trade.refresh_from_db()
    assert trade.status == Trade.Status.OPEN
    return trade


def test_a_sync_records_binance_positions_and_the_exposure_shows_them_beside_our_trades(binance, account, settings):
    settings.SYNC_RECOVER_MISSING_POSITIONS = False
    opened_trade(account, "0.010")
    opened_trade(account, "0.005")
    with BinanceFuturesClient.for_account(account) as client:  # someone trades by hand on the exchange
        client.place_order("ETHUSDT", "SELL", Decimal("0.5"), order_type="MARKET", client_order_id="by-hand-1")
    before = timezone.now()

    sync_positions_with_binance(account)

    stored = {(p.symbol, p.position_side): p.quantity for p in ExchangePosition.objects.filter(account=account)}
    assert stored == {("BTCUSDT", "BOTH"): Decimal("0.015"), ("ETHUSDT", "BOTH"): Decimal("-0.5")}
    rows = {(r.symbol, r.position_side): r for r in account_exposure(account)}
    btc, eth = rows[("BTCUSDT", "BOTH")], rows[("ETHUSDT", "BOTH")]
    assert (btc.exchange_qty, btc.ours, btc.difference, btc.trade_count, btc.in_sync) == (
        Decimal("0.015"),
        Decimal("0.015"),
        0,
        2,
        True,
    )
    assert btc.orphan is None and btc.confirmed_at is not None and btc.confirmed_at >= before
    assert (eth.exchange_qty, eth.ours, eth.difference, eth.in_sync) == (Decimal("-0.5"), 0, Decimal("-0.5"), False)
    assert eth.orphan is not None and eth.orphan.status == OrphanPosition.Status.OPEN


def test_a_side_that_went_flat_loses_its_row_and_our_unexplained_trade_shows_the_difference(binance, account, settings):
    settings.SYNC_RECOVER_MISSING_POSITIONS = False
    settings.POSITION_CONFIRM_SEC = 3600  # a close waits for a second read: the difference stays visible meanwhile
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("ETHUSDT", "SELL", Decimal("0.5"), order_type="MARKET", client_order_id="by-hand-1")
    sync_positions_with_binance(account)
    assert ExchangePosition.objects.filter(account=account).count() == 1
    with BinanceFuturesClient.for_account(account) as client:  # and closed by hand again
        client.place_order("ETHUSDT", "BUY", Decimal("0.5"), order_type="MARKET", reduce_only=True)
    # An open trade the exchange never had (e.g. a fill recorded twice): Binance shows nothing on BTCUSDT.
    TradeFactory(account=account, status=Trade.Status.OPEN, filled_qty=Decimal("0.010"), price=None)

    sync_positions_with_binance(account)

    assert not ExchangePosition.objects.filter(account=account).exists()
    [row] = account_exposure(account)
    assert (row.symbol, row.exchange_qty, row.ours, row.difference) == (
        "BTCUSDT",
        0,
        Decimal("0.010"),
        -Decimal("0.010"),
    )
    assert row.confirmed_at is not None and not row.in_sync


def test_record_replaces_the_accounts_rows_and_leaves_other_accounts_alone(make_account):
    first, second = make_account(), make_account()
    now = timezone.now()
    record_exchange_positions(second, {("XRPUSDT", "LONG"): (Decimal("10"), Decimal("0.5"))}, now)
    record_exchange_positions(
        first,
        {("BTCUSDT", "LONG"): (Decimal("0.1"), Decimal("50000")), ("BTCUSDT", "SHORT"): (Decimal("-0.2"), None)},
        now,
    )
    record_exchange_positions(first, {("BTCUSDT", "SHORT"): (Decimal("-0.3"), Decimal("51000"))}, now)

    assert list(ExchangePosition.objects.filter(account=first).values_list("symbol", "position_side", "quantity")) == [
        ("BTCUSDT", "SHORT", Decimal("-0.3"))
    ]
    assert ExchangePosition.objects.filter(account=second).count() == 1
