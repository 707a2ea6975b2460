"""Client order ids as Binance treats them: an empty one is no id (derived from the task id, so a redelivery finds
the first run's trade), and ids that differ only in case are two ids (MariaDB compares the column in binary)."""

from decimal import Decimal

import pytest
from django.db import connection

from reconciliation import bot, services, tasks
from trades.binance_client import BinanceFuturesClient, client_order_id_for
from trades.models import Trade

pytestmark = pytest.mark.django_db


def deliver_open_position(account, task_id, **kwargs):
    """One delivery of the open_position message `task_id`, as a worker runs it (in-process)."""
    result = tasks.open_position.apply(
        args=(account.pk, "BTCUSDT", "BUY", "0.010"),
        kwargs={"price": "50000", "timeout_sec": 60, **kwargs},
        task_id=task_id,
        throw=True,
    )
    return result.get()


def orders_sent(binance):
    return binance.control.stats()["requests"].get("POST /fapi/v1/order", 0)


def test_an_empty_client_order_id_redelivered_opens_one_trade_and_one_order(
    binance, account, placements, django_capture_on_commit_callbacks
):
    task_id = "5f0c9a52-0000-4000-8000-00000000e36f"
    with django_capture_on_commit_callbacks(execute=True):
        first = deliver_open_position(account, task_id, client_order_id="")
    placements.run()
    with django_capture_on_commit_callbacks(execute=True):
        again = deliver_open_position(account, task_id, client_order_id="")  # redelivered: killed before the ack
    placements.run()

    assert again == first
    trade = Trade.objects.get(account=account)
    assert trade.client_order_id == client_order_id_for(task_id)  # derived from the task id, as for None
    assert orders_sent(binance) == 1


def test_an_empty_client_order_id_called_without_a_task_id_gets_a_fresh_id(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        trade_id = tasks.open_position(account.pk, "BTCUSDT", "BUY", "0.010", "50000", client_order_id="")

    assert Trade.objects.get(pk=trade_id).client_order_id.startswith("tradeops-")


def test_bot_and_services_treat_an_empty_client_order_id_as_none(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        by_bot = bot.open_position(account, "BTCUSDT", "BUY", "0.010", "50000", client_order_id="")
    created, was_created = services.get_or_create_pending_trade(
        account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"), client_order_id=""
    )
    plain = services.create_pending_trade(account, "BTCUSDT", "BUY", Decimal("0.010"), client_order_id="")

    assert was_created
    ids = [trade.client_order_id for trade in (by_bot, created, plain)]
    assert all(cid.startswith("tradeops-") for cid in ids)
    assert len(set(ids)) == 3


def test_client_order_id_column_compares_case_sensitively_on_mysql(mysql_only):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'trades_trade' AND COLUMN_NAME = 'client_order_id'"
        )
        [(collation,)] = cursor.fetchall()
    assert collation == "utf8mb4_bin"


def test_ids_that_differ_only_in_case_are_two_trades_and_two_orders(mysql_only, binance, account):
    lower, _ = services.get_or_create_pending_trade(
        account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"), client_order_id="abc-1"
    )
    upper, created = services.get_or_create_pending_trade(
        account, "BTCUSDT", "BUY", Decimal("0.010"), Decimal("50000"), client_order_id="ABC-1"
    )

    assert created and upper.pk != lower.pk
    assert Trade.objects.get(account=account, client_order_id="abc-1").pk == lower.pk
    assert Trade.objects.get(account=account, client_order_id="ABC-1").pk == upper.pk
    assert not Trade.objects.filter(account=account, client_order_id="Abc-1").exists()

    for trade in (lower, upper):
        services.place_entry_order(Trade.objects.get(pk=trade.pk))
    with BinanceFuturesClient.for_account(account) as client:
        orders = {cid: client.get_order_by_client_order_id("BTCUSDT", cid) for cid in ("abc-1", "ABC-1")}
    assert orders["abc-1"]["orderId"] != orders["ABC-1"]["orderId"]
    for trade, cid in ((lower, "abc-1"), (upper, "ABC-1")):
        assert Trade.objects.get(pk=trade.pk).entry_order_id == orders[cid]["orderId"]

    # A fill of one is applied to that one only.
    assert Trade.objects.update_pending_to_filled(
        account.pk, "ABC-1", order_id=orders["ABC-1"]["orderId"], filled_qty="0.010", avg_price="50000", source="ws"
    )
    assert Trade.objects.get(pk=upper.pk).status == Trade.Status.OPEN
    assert Trade.objects.get(pk=lower.pk).status == Trade.Status.PENDING
