"""Entry deadlines in the database (Trade.cancel_after): stored with the placement, enforced by the countdown and the
15 s sweep (once between them), cancels that ride out database outages, and the clock that decides."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from reconciliation import services, tasks
from reconciliation.orders import rules
from reconciliation.orders.snapshots import OrderSnapshot
from tests.factories import TradeFactory
from tests.helpers import place
from tradeops.celery import app
from trades.db import db_now
from trades.models import Trade, TradeEvent


def requests_made(binance, what):
    return binance.control.stats()["requests"].get(what, 0)


@pytest.fixture
def eager(monkeypatch):
    """Tasks, chains and retries run in-process at once (countdowns are not waited for)."""
    monkeypatch.setitem(app.conf, "task_always_eager", True)


@pytest.fixture
def live_trade(binance, account):
    trade = TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=Decimal("50000"))
    place(trade)
    return trade


def overdue(account, **fields):
    return TradeFactory(account=account, cancel_after=timezone.now() - timedelta(seconds=5), **fields)


# --- the deadline is stored with the placement ------------------------------------------------------------------------


def test_the_deadline_is_stored_before_the_order_is_sent_and_kept_on_a_redelivery(binance, account, monkeypatch):
    trade = TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=Decimal("50000"))

    def db_gone(*args, **kwargs):  # the answer cannot be applied: the order is live, the trade still PLACING
        raise OperationalError(2013, "Lost connection to MySQL server during query")

    monkeypatch.setattr("reconciliation.entries.place.apply_order_snapshot", db_gone)
    monkeypatch.setattr(tasks.entry_timeout, "apply_async", lambda *args, **opts: None)
    with pytest.raises(OperationalError):
        tasks.place_entry_order(trade.pk, 30)
    trade.refresh_from_db()
    assert trade.cancel_after == trade.placed_at + timedelta(seconds=30)

    tasks.place_entry_order(trade.pk, 600)  # redelivered: nothing sent again, the deadline decided once stands
    assert Trade.objects.get(pk=trade.pk).cancel_after == trade.cancel_after
    assert requests_made(binance, "POST /fapi/v1/order") == 1


# --- once, between the sweep and the countdown ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sweep_sends_each_overdue_pending_entry_once(account, monkeypatch):
    due = overdue(account)
    TradeFactory(account=account, cancel_after=timezone.now() + timedelta(seconds=60))  # not yet
    TradeFactory(account=account)  # no deadline stored
    overdue(account, status=Trade.Status.OPEN)
    overdue(account, status=Trade.Status.CANCELLED)
    overdue(account, status=Trade.Status.FAILED, status_reason="rejected by exchange")
    sent = []

    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 1
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 0  # a second sweep
    monkeypatch.setattr(tasks, "cancel_and_verify", sent.append)
    assert tasks.entry_timeout(due.pk)["outcome"] == "already_sent"  # the countdown, late

    assert sent == [due.pk]
    assert Trade.objects.get(pk=due.pk).cancel_sent_at is not None


@pytest.mark.django_db
def test_the_sweep_leaves_a_placement_still_in_flight_to_its_countdown(account, settings):
    """A deadline shorter than the placement's round trip: a cancel now would reach Binance before the order."""
    settings.BINANCE_HTTP_TIMEOUT = 10
    trade = overdue(account, exchange_status="PLACING", placed_at=timezone.now() - timedelta(seconds=2))
    sent = []
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 0

    Trade.objects.filter(pk=trade.pk).update(placed_at=timezone.now() - timedelta(seconds=26))  # outcome unknown
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 1
    assert sent == [trade.pk]


@pytest.mark.django_db
def test_a_countdown_that_sent_the_cancel_keeps_the_sweep_from_sending_it_again(account, monkeypatch):
    trade = overdue(account)
    sent = []
    monkeypatch.setattr(tasks, "cancel_and_verify", sent.append)

    assert tasks.entry_timeout(trade.pk)["outcome"] == "sent"
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 0
    assert tasks.entry_timeout(trade.pk)["outcome"] == "already_sent"  # a redelivered countdown
    assert sent == [trade.pk]


@pytest.mark.django_db
def test_a_trade_still_pending_long_after_its_cancel_was_sent_is_sent_again(account, settings):
    settings.ENTRY_CANCEL_RESEND_SEC = 300
    trade = overdue(account, cancel_sent_at=timezone.now() - timedelta(seconds=200))
    sent = []
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 0  # its chain may still be at work

    Trade.objects.filter(pk=trade.pk).update(cancel_sent_at=timezone.now() - timedelta(seconds=301))
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 1  # lost with the broker's data?
    assert sent == [trade.pk]


@pytest.mark.django_db
def test_a_send_the_broker_refuses_gives_the_claim_back(account):
    trade = overdue(account)

    def broker_down(trade_id):
        raise ConnectionError("redis down")

    with pytest.raises(ConnectionError):
        services.cancel_overdue_entries(send=broker_down)
    assert Trade.objects.get(pk=trade.pk).cancel_sent_at is None
    sent = []
    assert services.cancel_overdue_entries(send=sent.append)["sent"] == 1
    assert sent == [trade.pk]


@pytest.mark.django_db
def test_the_sweep_is_bounded_and_its_queries_do_not_grow_with_the_trades(account, django_assert_max_num_queries):
    oldest = [overdue(account) for _ in range(12)]
    for _ in range(40):
        TradeFactory(account=account, cancel_after=timezone.now() + timedelta(seconds=60))
    sent = []

    with django_assert_max_num_queries(3 + 10):  # clock, two bounded selects, one claim per trade sent
        report = services.cancel_overdue_entries(send=sent.append, limit=10)
    assert (report["sent"], report["more"]) == (10, True)
    assert sent == [t.pk for t in sorted(oldest, key=lambda t: (t.cancel_after, t.pk))][:10]
    with django_assert_max_num_queries(3 + 2):
        assert services.cancel_overdue_entries(send=sent.append, limit=10)["sent"] == 2
    with django_assert_max_num_queries(3):  # nothing due: 40 trades waiting cost no more than none
        assert services.cancel_overdue_entries(send=sent.append, limit=10) == {"due": 0, "sent": 0, "more": False}


@pytest.mark.django_db
def test_a_countdown_that_fires_before_the_stored_deadline_waits_again(account, monkeypatch):
    """The countdown was computed on the scheduling worker's clock; the deadline on the database's decides."""
    trade = TradeFactory(account=account, cancel_after=timezone.now() + timedelta(seconds=120))
    scheduled, sent = [], []
    monkeypatch.setattr(tasks, "schedule_entry_timeout", lambda trade_id, seconds: scheduled.append(seconds))
    monkeypatch.setattr(tasks, "cancel_and_verify", sent.append)

    assert tasks.entry_timeout(trade.pk)["outcome"] == "not_due"
    assert sent == [] and 110 < scheduled[0] <= 120


def test_the_sweep_runs_every_15_seconds(db):
    app.loader.import_default_modules()
    sweep = PeriodicTask.objects.get(task="reconciliation.tasks.cancel_overdue_entries")
    assert (sweep.interval.every, sweep.interval.period, sweep.enabled) == (15, "seconds", True)
    assert sweep.task in app.tasks


# --- cancels ride out database outages -----------------------------------------------------------------------------


DATABASE_AWAY = OperationalError(2003, "Can't connect to MySQL")


def flaky_database(monkeypatch, target, name, failures, error=DATABASE_AWAY):
    """`target.name` raises `error` on its first `failures` calls (the database away), then works."""
    real, calls = getattr(target, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


@pytest.mark.parametrize("error", [OperationalError(2003, "Can't connect to MySQL server"), InterfaceError(0, "")])
def test_an_entry_timeout_during_a_database_outage_cancels_once_it_returns(
    binance, live_trade, eager, monkeypatch, error
):
    Trade.objects.filter(pk=live_trade.pk).update(cancel_after=timezone.now())
    calls = flaky_database(monkeypatch, services, "cancel_entry_at_deadline", 8, error)

    tasks.entry_timeout.apply((live_trade.pk,))

    assert len(calls) == 9
    assert requests_made(binance, "DELETE /fapi/v1/order") == 1
    assert Trade.objects.get(pk=live_trade.pk).status == Trade.Status.CANCELLED


def test_a_cancel_during_a_database_outage_is_sent_once_it_returns(binance, live_trade, eager, monkeypatch, settings):
    settings.CANCEL_RESEND_MAX = 0  # the cancel itself, not the verification's re-send, must reach Binance
    calls = flaky_database(monkeypatch, services, "cancel_trade_order", 8)

    tasks.cancel_and_verify(live_trade.pk)

    assert len(calls) == 9  # far more than the three tries a cancel used to get
    assert requests_made(binance, "DELETE /fapi/v1/order") == 1
    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.needs_operator) == (Trade.Status.CANCELLED, False)


def test_the_database_retries_of_a_cancel_last_about_cancel_db_retry_sec(settings):
    settings.CANCEL_RETRY_BASE_SEC, settings.CANCEL_DB_RETRY_SEC = 1, 600
    shortest = sum(0.5 * min(2**n, 60) for n in range(tasks.db_retry_limit()))
    assert 600 <= shortest < 600 + 30


def test_a_verification_that_finds_the_order_still_working_sends_the_cancel_again(binance, live_trade, eager):
    # Every try of the cancel itself fails (the exchange's 503s): the order keeps resting.
    binance.control.inject_fault("/fapi/v1/order", "503", count=1 + tasks.CANCEL_MAX_RETRIES, method="DELETE")

    tasks.cancel_and_verify(live_trade.pk)

    assert requests_made(binance, "DELETE /fapi/v1/order") == 1 + tasks.CANCEL_MAX_RETRIES + 1
    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.needs_operator) == (Trade.Status.CANCELLED, False)
    order = binance.control.get_order(trade.account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    assert order["status"] == "CANCELED"


# --- the clock, and the backstop for a wrong "not found" -----------------------------------------------------------


def test_a_worker_clock_minutes_ahead_does_not_skip_the_not_found_grace(binance, account, monkeypatch, settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 60
    trade = TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=Decimal("50000"))
    Trade.objects.filter(pk=trade.pk).update(exchange_status="PLACING", placed_at=db_now())  # outcome unknown
    trade.refresh_from_db()
    # this worker's clock
    monkeypatch.setattr("reconciliation.orders.apply.timezone.now", lambda: db_now() + timedelta(minutes=5))

    result = services.apply_order_snapshot(
        trade, OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id), "reconcile"
    )

    assert result == rules.NOT_FOUND_IN_GRACE
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING


def fail_as_not_found(trade):
    Trade.objects.filter(pk=trade.pk).update(
        status=Trade.Status.FAILED, status_reason=rules.NOT_FOUND_REASON, exchange_status="PLACING"
    )
    TradeEvent.objects.create(trade=trade, source="reconcile", from_status="pending", to_status="failed")


def test_a_trade_wrongly_failed_not_found_is_cancelled_by_the_sweep_and_corrected(binance, live_trade, eager):
    fail_as_not_found(live_trade)  # e.g. a worker whose clock jumped skipped the grace (before this fix)
    Trade.objects.filter(pk=live_trade.pk).update(cancel_after=timezone.now() - timedelta(seconds=1))

    assert services.cancel_overdue_entries(send=tasks.cancel_and_verify)["sent"] == 1
    assert services.cancel_overdue_entries(send=tasks.cancel_and_verify)["sent"] == 0  # once

    order = binance.control.get_order(live_trade.account.api_key, "BTCUSDT", client_order_id=live_trade.client_order_id)
    assert order["status"] == "CANCELED"
    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.status_reason) == (Trade.Status.CANCELLED, "CANCELED on exchange, nothing filled")
    assert list(TradeEvent.objects.filter(trade=trade).values_list("from_status", "to_status")) == [
        ("pending", "failed"),
        ("failed", "cancelled"),
    ]


def test_a_trade_failed_not_found_that_truly_never_existed_stays_failed(binance, account, eager):
    trade = TradeFactory(account=account, symbol="BTCUSDT", cancel_after=timezone.now() - timedelta(seconds=1))
    fail_as_not_found(trade)

    assert services.cancel_overdue_entries(send=tasks.cancel_and_verify)["sent"] == 1

    assert requests_made(binance, "DELETE /fapi/v1/order") == 1  # -2011, harmless
    trade.refresh_from_db()
    assert (trade.status, trade.status_reason, trade.needs_operator) == (
        Trade.Status.FAILED,
        rules.NOT_FOUND_REASON,
        False,
    )


def test_failing_a_trade_not_found_makes_its_deadline_send_once_more(binance, account, settings):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 0
    trade = TradeFactory(
        account=account,
        symbol="BTCUSDT",
        cancel_after=timezone.now() - timedelta(seconds=1),
        cancel_sent_at=timezone.now(),
    )  # the pending trade's cancel went out already

    services.apply_order_snapshot(
        trade, OrderSnapshot.not_found("BTCUSDT", client_order_id=trade.client_order_id), "reconcile"
    )

    trade.refresh_from_db()
    assert (trade.status, trade.cancel_sent_at) == (Trade.Status.FAILED, None)


@pytest.mark.parametrize("deadline", ["kept", "none"])
def test_a_trade_reopened_by_a_correction_keeps_or_gets_a_deadline(binance, live_trade, settings, deadline):
    settings.ENTRY_TIMEOUT_SEC = 60
    kept = timezone.now() - timedelta(seconds=30)
    fail_as_not_found(live_trade)
    Trade.objects.filter(pk=live_trade.pk).update(
        cancel_after=kept if deadline == "kept" else None, cancel_sent_at=timezone.now()
    )
    live_trade.refresh_from_db()
    order = binance.control.get_order(live_trade.account.api_key, "BTCUSDT", client_order_id=live_trade.client_order_id)

    assert services.apply_order_snapshot(live_trade, order, "ws") == rules.REOPENED

    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.cancel_sent_at) == (Trade.Status.PENDING, None)
    if deadline == "kept":
        assert trade.cancel_after == kept
    else:
        assert timedelta(seconds=50) < trade.cancel_after - timezone.now() <= timedelta(seconds=60)
