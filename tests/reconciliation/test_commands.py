from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.factories import TradeFactory
from tests.helpers import place
from trades.models import Trade

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("reconcile", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_reconcile_one_account_prints_its_report(binance, account):
    trade = TradeFactory(account=account, price=Decimal("50000"))
    place(trade)
    binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

    output = run("--account", account.name)

    assert f"{account.name}: outcome=ok checked=1 opened=1" in output
    assert " weight_used=1 " in output  # the one GET /fapi/v1/order
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.OPEN


def test_reconcile_all_goes_through_every_active_account(binance, make_account):
    accounts = [make_account(), make_account()]
    make_account(is_active=False, name="off")

    output = run("--all")

    assert [line.split(":")[0] for line in output.splitlines()] == sorted(a.name for a in accounts)
    assert all(" weight_used=0 " in line for line in output.splitlines())  # said even when nothing was spent


def test_unknown_account_is_an_error(binance, account):
    with pytest.raises(CommandError, match="no such account: nobody"):
        run("--account", "nobody")
