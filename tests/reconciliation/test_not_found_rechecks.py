"""A trade failed as "not found on exchange" is looked up again on NOT_FOUND_RECHECK_SEC's schedule by the account's
pending reconcile (reconciliation.orders.rechecks), and corrected by the one rule when its order shows up (docs/DESIGN.md "What Binance really does" F20)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reconciliation.orders import rechecks, rules
from reconciliation.orders.snapshots import OrderSnapshot
from reconciliation.services import apply_order_snapshot, reconcile_pending
from tests.factories import TradeFactory
from tests.helpers import place
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade, TradeEvent

pytestmark = pytest.mark.django_db

SCHEDULE = (300, 1800, 7200)


@pytest.fixture(autouse=True)
def _schedule(settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 0
    settings.NOT_FOUND_RECHECK_SEC = SCHEDULE


def failed_not_found(account, **fields) -> Trade:
    """A pending trade the rule fails as "not found on exchange" (Binance answered -2013 past the grace)."""
    trade = TradeFactory(account=account, price=Decimal("50000"), **fields)
    result = apply_order_snapshot(
        trade, OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id), "reconcile"
    )
    assert result == rules.FAILED
    trade.refresh_from_db()
    return trade


def make_due(trade) -> None:
    """Travel to the trade's due time (a second ago)."""
    Trade.objects.filter(pk=trade.pk).update(not_found_recheck_at=timezone.now() - timedelta(seconds=1))
    trade.refresh_from_db()


def exchange_order(trade) -> dict:
    with BinanceFuturesClient.for_account(trade.account) as client:
        return client.get_order_by_client_order_id(trade.symbol, trade.client_order_id)


def events(trade):
    return [(e.from_status, e.to_status) for e in TradeEvent.objects.filter(trade=trade).order_by("pk")]


def order_lookups(binance) -> int:
    return binance.control.stats()["requests"].get("GET /fapi/v1/order", 0)


def test_failing_as_not_found_schedules_the_first_recheck(binance, account):
    before = timezone.now()
    trade = failed_not_found(account)

    assert (trade.status, trade.status_reason) == ("failed", rules.NOT_FOUND_REASON)
    assert trade.not_found_rechecks == 0
    assert before + timedelta(seconds=300) <= trade.not_found_recheck_at <= timezone.now() + timedelta(seconds=300)


def test_an_empty_schedule_never_rechecks(binance, account, settings):
    settings.NOT_FOUND_RECHECK_SEC = ()
    trade = failed_not_found(account)

    assert trade.not_found_recheck_at is None


def test_a_recheck_not_due_yet_costs_nothing(binance, account):
    failed_not_found(account)
    binance.control.reset_stats()

    report = reconcile_pending(account)

    assert report["rechecked"] == 0 and report["weight_used"] == 0
    assert order_lookups(binance) == 0


def test_a_due_recheck_that_finds_the_order_filled_corrects_the_trade_audited(binance, account):
    trade = failed_not_found(account)
    place(trade)  # the order existed all along; Binance's -2013 was wrong
    binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id, price="50001")
    make_due(trade)

    report = reconcile_pending(account)

    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.010"), Decimal("50001"))
    assert trade.not_found_recheck_at is None
    assert report["rechecked"] == 1 and report["corrected"] == 1 and report["weight_used"] == 1
    assert events(trade) == [("pending", "failed"), ("failed", "open")]
    correction = TradeEvent.objects.filter(trade=trade).order_by("pk").last()
    assert correction.source == "reconcile"
    assert rules.NOT_FOUND_REASON in correction.payload["correction"]
    assert "FILLED" in correction.payload["correction"]


def test_a_recheck_that_finds_the_order_resting_makes_the_trade_pending_again(binance, account):
    trade = failed_not_found(account)
    place(trade)
    make_due(trade)

    reconcile_pending(account)

    trade.refresh_from_db()
    assert (trade.status, trade.status_reason, trade.exchange_status) == ("pending", "", "NEW")
    assert trade.not_found_recheck_at is None
    assert events(trade) == [("pending", "failed"), ("failed", "pending")]


def test_a_recheck_that_finds_the_order_ended_unfilled_cancels_the_trade(binance, account):
    trade = failed_not_found(account)
    place(trade)
    binance.control.cancel_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    make_due(trade)

    report = reconcile_pending(account)

    trade.refresh_from_db()
    assert (trade.status, trade.status_reason) == ("cancelled", "CANCELED on exchange, nothing filled")
    assert trade.not_found_recheck_at is None
    assert report["corrected"] == 1
    assert events(trade) == [("pending", "failed"), ("failed", "cancelled")]


def test_a_failure_binance_explained_is_never_turned_into_cancelled(binance, account):
    """Only our own inference ("not found") is corrected to cancelled; a rejected trade stays failed."""
    trade = TradeFactory(account=account, status=Trade.Status.FAILED, status_reason="rejected by exchange")
    place(trade)
    binance.control.cancel_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)

    assert apply_order_snapshot(trade, exchange_order(trade), "reconcile") == rules.UNCHANGED
    trade.refresh_from_db()
    assert trade.status == Trade.Status.FAILED


def test_no_more_lookups_than_the_schedule_has_entries(binance, account):
    trade = failed_not_found(account)  # never placed: Binance keeps saying -2013
    failed_at = trade.not_found_recheck_at - timedelta(seconds=SCHEDULE[0])
    binance.control.reset_stats()

    dues = []
    for made in range(len(SCHEDULE)):
        make_due(trade)
        report = reconcile_pending(account)
        trade.refresh_from_db()
        assert report["rechecked"] == 1 and report["unchanged"] == 1
        assert trade.not_found_rechecks == made + 1
        dues.append(trade.not_found_recheck_at)
    for _ in range(2):  # nothing left to do
        assert reconcile_pending(account)["rechecked"] == 0

    assert order_lookups(binance) == len(SCHEDULE)
    assert dues[-1] is None
    assert trade.status == Trade.Status.FAILED and events(trade) == [("pending", "failed")]
    assert dues[0] is not None and failed_at < dues[0]


def test_the_next_due_time_counts_from_the_failure(account):
    failed_at = timezone.now() - timedelta(seconds=400)
    trade = Trade(account=account, not_found_rechecks=0, not_found_recheck_at=failed_at + timedelta(seconds=300))

    assert rechecks.next_recheck_at(trade, timezone.now()) == failed_at + timedelta(seconds=1800)
    trade.not_found_rechecks = 2
    trade.not_found_recheck_at = failed_at + timedelta(seconds=7200)
    assert rechecks.next_recheck_at(trade, timezone.now()) is None


def test_a_recheck_is_claimed_once(binance, account):
    trade = failed_not_found(account)
    make_due(trade)
    stale_copy = Trade.objects.get(pk=trade.pk)

    assert rechecks.claim_not_found_recheck(trade) is not None
    assert rechecks.claim_not_found_recheck(stale_copy) is None  # another run got there first


def test_a_rate_limited_recheck_gives_its_entry_back(binance, account):
    trade = failed_not_found(account)
    make_due(trade)
    due = trade.not_found_recheck_at
    binance.control.inject_fault("/fapi/v1/order", "429", method="GET", retry_after=1)

    report = reconcile_pending(account)

    trade.refresh_from_db()
    assert report["stopped_early"]
    assert (trade.not_found_rechecks, trade.not_found_recheck_at) == (0, due)


def test_an_errored_recheck_uses_its_entry_and_is_reported(binance, account):
    trade = failed_not_found(account)
    make_due(trade)
    binance.control.inject_fault("/fapi/v1/order", "500", method="GET", count=10)

    report = reconcile_pending(account)

    trade.refresh_from_db()
    assert report["errors"] == 1 and report["rechecked"] == 1
    assert trade.not_found_rechecks == 1 and trade.not_found_recheck_at is not None


def test_rechecks_stop_at_the_weight_budget(binance, account, settings):
    trade = failed_not_found(account)
    make_due(trade)
    settings.RECONCILE_WEIGHT_BUDGET = 0

    report = reconcile_pending(account)

    trade.refresh_from_db()
    assert report["stopped_early"] and report["rechecked"] == 0
    assert trade.not_found_rechecks == 0


def test_the_deep_pass_leaves_rechecks_to_the_pending_reconcile(binance, account):
    trade = failed_not_found(account)
    make_due(trade)

    assert reconcile_pending(account, deep=True)["rechecked"] == 0


def test_due_rechecks_are_one_query_whatever_their_number(binance, account):
    trades = [failed_not_found(account) for _ in range(5)]
    for trade in trades[:3]:
        make_due(trade)

    with CaptureQueriesContext(connection) as queries:
        due = rechecks.due_not_found_rechecks(account.pk)

    assert len(queries) == 1
    assert sorted(t.pk for t in due) == sorted(t.pk for t in trades[:3])


def test_due_rechecks_are_read_through_their_index(account, mysql_only):
    plan = (
        Trade.objects.filter(
            account_id=account.pk, not_found_recheck_at__lte=timezone.now(), status=Trade.Status.FAILED
        )
        .order_by("not_found_recheck_at", "pk")
        .explain()
    )

    assert "trade_account_nf_recheck" in plan
