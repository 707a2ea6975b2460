"""docs/DESIGN.md "What Binance really does" rows about positions, on the real stack (sandbox, two Celery workers, the user stream, MariaDB,
Redis): a lagging positionRisk read (F21), hedge mode (F22), one-way netting (F23), Binance's own closes —
liquidation, ADL — in full and in part (F24). Each ends with the invariant."""

import uuid
from decimal import Decimal

import pytest

from reconciliation import tasks
from reconciliation.models import OrphanPosition, ReconcileRun
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def entered(account, side, *, symbol="BTCUSDT", qty="0.010"):
    """The bot's flow with a MARKET entry; the trade once it is open."""
    cid = f"e2e-{uuid.uuid4().hex[:20]}"
    tasks.open_position.delay(account.pk, symbol, side, qty, None, timeout_sec=600, client_order_id=cid)
    trade = wait_for(
        lambda: Trade.objects.filter(client_order_id=cid).exclude(status=Trade.Status.PENDING).first(),
        message=f"{cid} {side} decided",
    )
    assert trade.status == Trade.Status.OPEN, f"{trade.status}: {trade.status_reason}"
    return trade


def status_of(trade):
    return Trade.objects.get(pk=trade.pk).status


def test_f21_a_lagging_position_read_does_not_close_a_live_trade(e2e):
    account = e2e.account()
    trade = entered(account, "BUY")
    # Binance's next read shows no position (one read only: two lagging reads POSITION_CONFIRM_SEC apart would rightly
    # close the trade, and on a loaded machine the stream's sync and ours may be that far apart).
    e2e.control.lag_positions(account.api_key, count=1, mode="omit")

    tasks.sync_positions.delay(account.pk, reason="e2e")

    # Some sync read "nothing" (it may be the stream's, after the fill's ACCOUNT_UPDATE, or ours) and did not close.
    wait_for(lambda: e2e.control.positions(account.api_key)["lag_reads"] == 0, message="the lagging read served")
    lagged = wait_for(
        lambda: ReconcileRun.objects.filter(
            account=account, kind="positions", report__extra__unconfirmed__gte=1
        ).first(),
        message="a position sync that saw the position gone",
    )
    # The read it scheduled POSITION_CONFIRM_SEC later sees the position again.
    wait_for(
        lambda: ReconcileRun.objects.filter(
            account=account, kind="positions", reason="confirm_close", started_at__gt=lagged.started_at
        ).exists(),
        message="the confirming read",
    )
    assert status_of(trade) == Trade.Status.OPEN
    assert not trade.events.filter(to_status=Trade.Status.CLOSED).exists()
    assert Trade.objects.get(pk=trade.pk).position_gone_at is None
    e2e.settle()


def test_f22_a_hedge_mode_account_enters_long_and_short_on_one_symbol(e2e):
    account = e2e.account()
    e2e.control.set_position_mode(account.api_key, True)  # the account's owner switched to hedge mode

    long, short = entered(account, "BUY"), entered(account, "SELL")

    assert (long.position_side, short.position_side) == ("LONG", "SHORT")
    sides = {(p["positionSide"], p["positionAmt"]) for p in e2e.control.positions(account.api_key)["positions"]}
    assert sides == {("LONG", "0.010"), ("SHORT", "-0.010")}
    e2e.settle()
    assert {status_of(long), status_of(short)} == {Trade.Status.OPEN}
    assert not OrphanPosition.objects.filter(account=account).exists()


def test_f23_one_way_trades_that_net_out_are_consistent(e2e):
    account = e2e.account()

    buy, sell = entered(account, "BUY"), entered(account, "SELL")

    assert e2e.control.positions(account.api_key)["positions"] == []  # Binance nets them: no position
    e2e.settle()
    # Once more, by a worker: nothing gone to confirm, nothing closed.
    tasks.sync_positions.delay(account.pk, reason="e2e_again")
    wait_for(
        lambda: ReconcileRun.objects.filter(account=account, kind="positions", reason="e2e_again").exists(),
        message="a worker's position sync",
    )
    assert {status_of(buy), status_of(sell)} == {Trade.Status.OPEN}
    assert not OrphanPosition.objects.filter(account=account).exists()
    assert not ReconcileRun.objects.filter(account=account, report__extra__unconfirmed__gte=1).exists()


def fresh(trade):
    return Trade.objects.get(pk=trade.pk)


def test_f24_a_full_liquidation_closes_the_trade_with_the_reason_price_and_pnl(e2e):
    account = e2e.account()
    trade = entered(account, "BUY")

    e2e.control.autoclose(account.api_key, "BTCUSDT", "liquidation", price="57000")

    # The stream: ORDER_TRADE_UPDATE autoclose-… (not ours) and ACCOUNT_UPDATE → a position sync reads the fills.
    wait_for(lambda: status_of(trade) == Trade.Status.CLOSED, message="closed by the liquidation")
    trade = fresh(trade)
    assert trade.status_reason == "closed by liquidation"
    assert (trade.exit_price, trade.realized_pnl, trade.closed_qty) == (
        Decimal("57000"),
        Decimal("-30"),
        Decimal("0.010"),
    )
    e2e.settle()
    assert not OrphanPosition.objects.filter(account=account).exists()


def test_f24_a_partial_liquidation_then_adl_reduce_then_close_the_trade(e2e):
    account = e2e.account()
    trade = entered(account, "SELL")

    e2e.control.autoclose(account.api_key, "BTCUSDT", "liquidation", qty="0.004", price="61000")
    wait_for(lambda: fresh(trade).closed_qty == Decimal("0.004"), message="reduced by the partial liquidation")
    reduced = fresh(trade)
    assert (reduced.status, reduced.status_reason) == ("open", "partly closed by liquidation")
    e2e.settle()
    assert not OrphanPosition.objects.filter(account=account).exists()

    e2e.control.autoclose(account.api_key, "BTCUSDT", "adl", price="59000")
    wait_for(lambda: status_of(trade) == Trade.Status.CLOSED, message="closed by ADL")
    trade = fresh(trade)
    assert trade.status_reason == "closed by ADL"
    assert trade.exit_price == Decimal("59800")  # (0.004 × 61000 + 0.006 × 59000) / 0.010
    assert trade.realized_pnl == Decimal("2")  # short from 60000: −4 + 6
    assert [e.payload["by_binance"] for e in trade.events.filter(source="position_sync")] == [["liquidation"], ["ADL"]]
    e2e.settle()
    assert not OrphanPosition.objects.filter(account=account).exists()


def test_f29_a_take_profit_algo_order_closes_half_a_trade(e2e):
    account = e2e.account()
    trade = entered(account, "BUY")
    with BinanceFuturesClient.for_account(account) as client:  # the exit lives in Binance's Algo Service
        algo = client.place_algo_order(
            "BTCUSDT",
            "SELL",
            "TAKE_PROFIT_MARKET",
            trigger_price=Decimal("62000"),
            quantity=Decimal("0.005"),
            reduce_only=True,
        )

    e2e.control.trigger_algo_order(account.api_key, algo_id=algo["algoId"], price="62000")

    # ALGO_UPDATE (TRIGGERED, FINISHED), the triggered order's ORDER_TRADE_UPDATE and ACCOUNT_UPDATE → position sync.
    wait_for(lambda: fresh(trade).closed_qty == Decimal("0.005"), message="half closed by the take-profit")
    trade = fresh(trade)
    assert (trade.status, trade.exit_price, trade.realized_pnl) == ("open", Decimal("62000"), Decimal("10"))
    e2e.settle()
    assert not OrphanPosition.objects.filter(account=account).exists()
