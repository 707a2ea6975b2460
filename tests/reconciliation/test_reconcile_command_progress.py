"""`manage.py reconcile --all`: a progress line on a terminal, none when stdout is not one."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from tests.factories import TradeFactory
from tests.helpers import place

pytestmark = pytest.mark.django_db


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def run_all(out: StringIO) -> str:
    call_command("reconcile", "--all", stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def two_accounts(binance, make_account):
    first, second = make_account(name="acct-a"), make_account(name="acct-b")
    trade = TradeFactory(account=first, price=Decimal("50000"))
    place(trade)
    binance.control.fill_order(first.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    return first, second


def test_on_a_terminal_it_shows_accounts_done_weight_and_corrections(two_accounts):
    output = run_all(Terminal())

    assert "\r\x1b[K[0/2 accounts] weight 0, corrections 0 — acct-a…" in output
    assert "\r\x1b[K[1/2 accounts] weight 1, corrections 0 — acct-b…" in output
    assert output.endswith("[2/2 accounts] weight 1, corrections 0\n")
    reports = [line.rsplit("\x1b[K", 1)[-1] for line in output.splitlines()]
    assert [r.split(":")[0] for r in reports if ": outcome=" in r] == ["acct-a", "acct-b"]  # the reports still print


def test_not_on_a_terminal_it_prints_only_the_reports(two_accounts):
    output = run_all(StringIO())

    assert "\r" not in output and "\x1b" not in output and "accounts]" not in output
    assert [line.split(":")[0] for line in output.splitlines()] == ["acct-a", "acct-b"]


def test_json_output_has_no_progress_even_on_a_terminal(two_accounts):
    out = Terminal()
    call_command("reconcile", "--all", "--json", stdout=out, stderr=StringIO())
    assert "accounts]" not in out.getvalue()
