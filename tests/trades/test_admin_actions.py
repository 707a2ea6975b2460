"""Trade admin actions through the Django test client, as an operator (trades.fix_trade) and as an observer (view
only): every change goes through a service and leaves a TradeEvent with the admin user as actor."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from reconciliation import services, tasks
from reconciliation.models import OrphanPosition
from reconciliation.reconcile.leases import account_lease
from tests.admin_helpers import run_action
from tests.factories import TradeFactory
from tests.helpers import place
from tradeops.celery import app as celery_app
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade, TradeEvent

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:trades_trade_changelist")


@pytest.fixture
def placed(account):
    """A pending trade whose LIMIT order rests on the sandbox exchange."""

    def make(**fields):
        trade = TradeFactory(account=account, symbol="BTCUSDT", price=Decimal("60000"), **fields)
        order = place(trade)
        Trade.objects.filter(pk=trade.pk).update(entry_order_id=order["orderId"], exchange_status="NEW")
        trade.refresh_from_db()
        return trade

    return make


def fill(binance, trade, qty=None):
    binance.control.fill_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id, qty=qty)


# --- Verify on Binance --------------------------------------------------------------------------------------------


def test_verify_on_binance_applies_the_fill_and_shows_both_sides(operator_client, operator, placed, binance):
    trade = placed()
    fill(binance, trade)

    response = run_action(operator_client, CHANGELIST, "verify_on_binance", [trade])

    assert response.status_code == 200
    page = response.content.decode()
    assert "Verified on Binance" in page and "FILLED" in page and "opened" in page
    trade.refresh_from_db()
    assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.010"), Decimal("60000"))
    event = trade.events.get()
    assert (event.source, event.from_status, event.to_status, event.actor) == (
        "admin",
        "pending",
        "open",
        operator.username,
    )


def test_verify_on_binance_reports_an_unreachable_exchange_and_changes_nothing(operator_client, placed, binance):
    trade = placed()
    binance.control.inject_fault("/fapi/v1/order", "503", count=3, method="GET")

    response = run_action(operator_client, CHANGELIST, "verify_on_binance", [trade])

    assert response.status_code == 200
    assert "Binance could not be asked" in response.content.decode()
    trade.refresh_from_db()
    assert trade.status == "pending" and not trade.events.exists()


def test_an_observer_can_look_but_not_verify(observer_client, placed, binance):
    trade = placed()
    fill(binance, trade)

    listing = observer_client.get(CHANGELIST)
    assert listing.status_code == 200
    assert "verify_on_binance" not in listing.content.decode()
    response = run_action(observer_client, CHANGELIST, "verify_on_binance", [trade])

    assert response.status_code in (200, 302)  # the action is not offered to them: the changelist, unchanged
    trade.refresh_from_db()
    assert trade.status == "pending" and not trade.events.exists()
    assert observer_client.get(reverse("admin:trades_trade_change", args=[trade.pk])).status_code == 200


# --- Cancel and verify --------------------------------------------------------------------------------------------


def test_cancel_and_verify_is_enqueued_after_commit(
    operator_client, operator, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(tasks.cancel_and_verify, "delay", lambda *args: sent.append(args))
    pending, opened = TradeFactory(), TradeFactory(status=Trade.Status.OPEN)

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(operator_client, CHANGELIST, "cancel_and_verify", [pending, opened])

    assert response.status_code == 302
    assert sent == [(pending.pk, operator.username)]  # the operator goes on the events the cancel writes
    entry = LogEntry.objects.get(object_id=str(pending.pk))
    assert entry.user == operator and "cancel and verify" in entry.get_change_message()


def test_the_events_an_operators_cancel_and_verify_writes_carry_the_operator(placed, binance, monkeypatch):
    trade = placed()
    binance.control.arm_cancel_race(trade.account.api_key)  # the cancel loses to a fill: verify opens it
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)  # the chain runs in-process

    tasks.cancel_and_verify(trade.pk, "desk-anna")

    trade.refresh_from_db()
    assert trade.status == "open"
    assert list(trade.events.values_list("source", "to_status", "actor")) == [("cancel_verify", "open", "desk-anna")]


def test_an_observer_cannot_cancel(observer_client, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(tasks.cancel_and_verify, "delay", lambda *args: sent.append(args))
    trade = TradeFactory()
    with django_capture_on_commit_callbacks(execute=True):
        run_action(observer_client, CHANGELIST, "cancel_and_verify", [trade])
    assert sent == []


# --- Mark failed/cancelled manually -------------------------------------------------------------------------------


def test_mark_manually_asks_for_a_reason_first(operator_client, account):
    trade = TradeFactory(account=account)

    form = run_action(operator_client, CHANGELIST, "mark_manually", [trade])
    assert form.status_code == 200
    assert "Mark trades failed or cancelled by hand" in form.content.decode()

    empty = run_action(operator_client, CHANGELIST, "mark_manually", [trade], apply="1", status="failed", reason=" ")
    assert empty.status_code == 200 and "This field is required" in empty.content.decode()
    trade.refresh_from_db()
    assert trade.status == "pending" and not trade.events.exists()


def test_mark_manually_refuses_an_order_sent_moments_ago_that_binance_does_not_show_yet(
    operator_client, account, settings
):
    settings.PENDING_NOT_FOUND_GRACE_SEC = 120
    trade = TradeFactory(
        account=account,
        symbol="BTCUSDT",
        created_at=timezone.now() - timedelta(hours=1),
        exchange_status="PLACING",
        placed_at=timezone.now(),
    )  # sent just now, answer unknown

    response = run_action(
        operator_client, CHANGELIST, "mark_manually", [trade], apply="1", status="failed", reason="looks stuck"
    )

    assert response.status_code == 302
    assert "Binance may not show it yet" in " ".join(str(m) for m in response.wsgi_request._messages)
    trade.refresh_from_db()
    assert trade.status == "pending" and not trade.events.exists()


def test_mark_manually_marks_an_order_binance_never_saw(operator_client, operator, account):
    trade = TradeFactory(account=account, symbol="BTCUSDT")  # never placed: Binance answers -2013

    response = run_action(
        operator_client,
        CHANGELIST,
        "mark_manually",
        [trade],
        apply="1",
        status="failed",
        reason="bot crashed before placing; checked with the desk",
    )

    assert response.status_code == 302
    trade.refresh_from_db()
    assert trade.status == "failed"
    assert trade.status_reason.startswith(f"marked failed by {operator.username}: bot crashed")
    event = trade.events.get()
    assert (event.source, event.from_status, event.to_status, event.actor) == (
        "admin",
        "pending",
        "failed",
        operator.username,
    )
    assert event.payload["reason"] == "bot crashed before placing; checked with the desk"
    assert event.payload["exchange_status"] == "NOT_FOUND"


def test_mark_manually_marks_cancelled_when_binance_shows_it_cancelled_unfilled(operator_client, placed, binance):
    trade = placed()
    binance.control.cancel_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id)

    run_action(operator_client, CHANGELIST, "mark_manually", [trade], apply="1", status="cancelled", reason="desk")

    trade.refresh_from_db()
    assert trade.status == "cancelled" and trade.events.get().actor == "night-operator"


@pytest.mark.parametrize("binance_says", ["partial fill", "filled", "working", "unreachable"])
def test_mark_manually_refuses_unless_binance_confirms_nothing_to_lose(operator_client, placed, binance, binance_says):
    trade = placed()
    if binance_says == "partial fill":
        fill(binance, trade, qty="0.004")
    elif binance_says == "filled":
        fill(binance, trade)
    elif binance_says == "unreachable":
        binance.control.inject_fault("/fapi/v1/order", "503", count=3, method="GET")

    response = run_action(
        operator_client, CHANGELIST, "mark_manually", [trade], apply="1", status="failed", reason="looks stuck"
    )

    assert response.status_code == 302
    message = " ".join(str(m) for m in response.wsgi_request._messages)
    assert f"Trade {trade.pk} not marked" in message
    expected = {
        "partial fill": "Verify on Binance",
        "filled": "Verify on Binance",
        "working": "Cancel and verify",
        "unreachable": "could not be asked",
    }[binance_says]
    assert expected in message
    trade.refresh_from_db()
    assert trade.status == "pending" and not trade.events.exists()


def test_an_observer_cannot_mark(observer_client, account):
    trade = TradeFactory(account=account)
    run_action(observer_client, CHANGELIST, "mark_manually", [trade], apply="1", status="failed", reason="x")
    trade.refresh_from_db()
    assert trade.status == "pending" and not TradeEvent.objects.exists()


# --- Close by hand --------------------------------------------------------------------------------------------------


@pytest.fixture
def two_open_one_closed_on_binance(placed, binance, account):
    """Two open BUY 0.010 BTCUSDT trades; then 0.010 was sold reduce-only on Binance, and userTrades cannot be read
    (so position sync cannot apply the exit to the oldest trade): a person decides which trade it closed."""
    first, second = placed(), placed()
    for trade in (first, second):
        fill(binance, trade)
        services.reconcile_pending(account)
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("BTCUSDT", "SELL", Decimal("0.010"), order_type="MARKET", reduce_only=True)
    binance.control.inject_fault("/fapi/v1/userTrades", "503", count=1, method="GET")
    report = services.sync_positions_with_binance(account)
    assert report["extra"] == {"closed": 0, "in_sync": 0, "orphans": 1, "recovered": 0, "unconfirmed": 0, "reduced": 0}
    return Trade.objects.get(pk=first.pk), Trade.objects.get(pk=second.pk)


def test_close_manually_closes_the_trade_binance_no_longer_holds(
    operator_client, operator, account, two_open_one_closed_on_binance
):
    first, second = two_open_one_closed_on_binance

    response = run_action(
        operator_client,
        CHANGELIST,
        "close_manually",
        [first],
        apply="1",
        reason="the 10:02 reduce-only sell closed this one",
    )

    assert response.status_code == 302
    first.refresh_from_db()
    assert (first.status, first.status_reason) == (
        "closed",
        f"closed by {operator.username}: the 10:02 reduce-only sell closed this one",
    )
    event = first.events.get(to_status="closed")
    assert (event.source, event.from_status, event.actor) == ("admin", "open", operator.username)
    assert Trade.objects.get(pk=second.pk).status == "open"
    report = services.sync_positions_with_binance(account)
    assert report["extra"]["in_sync"] == 1 and OrphanPosition.objects.get().status == "resolved"


def test_close_manually_refuses_what_would_take_the_books_away_from_binance(
    operator_client, account, binance, two_open_one_closed_on_binance
):
    first, second = two_open_one_closed_on_binance
    run_action(operator_client, CHANGELIST, "close_manually", [first], apply="1", reason="this one")

    response = run_action(operator_client, CHANGELIST, "close_manually", [second], apply="1", reason="and this one")

    message = " ".join(str(m) for m in response.wsgi_request._messages)
    assert f"Trade {second.pk} not closed: Binance holds 0.010 BTCUSDT" in message
    assert Trade.objects.get(pk=second.pk).status == "open"

    binance.control.inject_fault("/fapi/v3/positionRisk", "503", count=3, method="GET")
    Trade.objects.filter(pk=first.pk).update(status="open")  # pretend: two again, but Binance cannot answer
    response = run_action(operator_client, CHANGELIST, "close_manually", [second], apply="1", reason="still")
    assert "could not be asked" in " ".join(str(m) for m in response.wsgi_request._messages)
    assert Trade.objects.get(pk=second.pk).status == "open"


def test_close_manually_waits_for_the_accounts_lease(operator_client, account, two_open_one_closed_on_binance):
    """Two operators (or one and a position sync) must not both act on the same answer from Binance."""
    first, _ = two_open_one_closed_on_binance
    with account_lease(account.pk) as held:
        assert held
        response = run_action(operator_client, CHANGELIST, "close_manually", [first], apply="1", reason="this one")

    assert "is running; try again" in " ".join(str(m) for m in response.wsgi_request._messages)
    assert Trade.objects.get(pk=first.pk).status == "open"


def test_close_manually_asks_for_a_reason_first(operator_client, two_open_one_closed_on_binance):
    first, _ = two_open_one_closed_on_binance
    form = run_action(operator_client, CHANGELIST, "close_manually", [first])
    assert form.status_code == 200 and "Close open trades by hand" in form.content.decode()
    empty = run_action(operator_client, CHANGELIST, "close_manually", [first], apply="1", reason=" ")
    assert empty.status_code == 200 and "This field is required" in empty.content.decode()
    assert Trade.objects.get(pk=first.pk).status == "open"


def test_an_observer_cannot_close(observer_client, two_open_one_closed_on_binance):
    first, _ = two_open_one_closed_on_binance
    run_action(observer_client, CHANGELIST, "close_manually", [first], apply="1", reason="x")
    assert Trade.objects.get(pk=first.pk).status == "open"


# --- Filters ------------------------------------------------------------------------------------------------------


def test_stale_pending_filter(operator_client):
    now = timezone.now()
    fresh = TradeFactory(created_at=now - timedelta(minutes=2))
    stale = TradeFactory(created_at=now - timedelta(minutes=40))
    very_stale = TradeFactory(created_at=now - timedelta(hours=3))
    old_but_open = TradeFactory(created_at=now - timedelta(hours=3), status=Trade.Status.OPEN)

    def listed(minutes):
        response = operator_client.get(CHANGELIST, {"stale": minutes})
        assert response.status_code == 200
        return {t.pk for t in response.context["cl"].result_list}

    assert listed(5) == {stale.pk, very_stale.pk}
    assert listed(30) == {stale.pk, very_stale.pk}
    assert listed(120) == {very_stale.pk}
    assert fresh.pk not in listed(5) and old_but_open.pk not in listed(5)


def test_needs_operator_filter(operator_client):
    flagged, plain = TradeFactory(needs_operator=True), TradeFactory()
    response = operator_client.get(CHANGELIST, {"flagged": "yes"})
    assert {t.pk for t in response.context["cl"].result_list} == {flagged.pk}
    response = operator_client.get(CHANGELIST, {"flagged": "no"})
    assert {t.pk for t in response.context["cl"].result_list} == {plain.pk}
