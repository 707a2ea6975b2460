"""Account, orphan-position and reconcile-run admin, as an operator and as an observer."""

from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from reconciliation.models import AccountSyncState, OrphanPosition, ReconcileRun
from tests.admin_helpers import run_action
from tests.factories import AccountFactory, TradeFactory
from tests.helpers import place
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

pytestmark = pytest.mark.django_db

ACCOUNTS = reverse("admin:trades_account_changelist")
ORPHANS = reverse("admin:reconciliation_orphanposition_changelist")
RUNS = reverse("admin:reconciliation_reconcilerun_changelist")


def filled_pending_trade(account, binance):
    trade = TradeFactory(account=account, symbol="BTCUSDT", price=Decimal("60000"))
    place(trade)
    binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    return trade


def hand_made_position(account):
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("ETHUSDT", "BUY", Decimal("0.100"), order_type="MARKET", client_order_id="by-hand-1")


# --- Accounts -----------------------------------------------------------------------------------------------------


def test_reconcile_now_runs_at_once_and_is_logged(operator_client, operator, account, binance):
    trade = filled_pending_trade(account, binance)

    response = run_action(operator_client, ACCOUNTS, "reconcile_now", [account])

    assert response.status_code == 302
    trade.refresh_from_db()
    assert trade.status == "open"
    run = ReconcileRun.objects.get(account=account)
    assert (run.reason, run.outcome, run.report["opened"], run.report["actor"]) == ("admin", "ok", 1, operator.username)
    assert trade.events.get(to_status="open").actor == operator.username  # the change, audited with who asked
    entry = LogEntry.objects.get(object_id=str(account.pk))
    assert entry.user == operator and "reconcile (admin): ok: checked 1, opened 1" in entry.get_change_message()
    listing = operator_client.get(ACCOUNTS).content.decode()
    assert "ok: checked 1, opened 1; weight 1" in listing  # last result column, with the Binance weight spent


def test_sync_positions_now_reports_an_orphan(operator_client, account, binance):
    hand_made_position(account)

    run_action(operator_client, ACCOUNTS, "sync_positions_now", [account])

    orphan = OrphanPosition.objects.get(account=account)
    assert (orphan.symbol, orphan.quantity, orphan.status) == ("ETHUSDT", Decimal("0.1"), "open")
    assert ReconcileRun.objects.get(account=account).reason == "admin"


def test_an_observer_cannot_reconcile_or_sync(observer_client, account, binance):
    trade = filled_pending_trade(account, binance)
    listing = observer_client.get(ACCOUNTS)
    assert listing.status_code == 200 and "reconcile_now" not in listing.content.decode()

    run_action(observer_client, ACCOUNTS, "reconcile_now", [account])
    run_action(observer_client, ACCOUNTS, "sync_positions_now", [account])

    trade.refresh_from_db()
    assert trade.status == "pending"
    assert not ReconcileRun.objects.exists()


def test_account_list_shows_sync_and_stream_state(operator_client):
    from django.utils import timezone

    account = AccountFactory(name="desk-a")
    AccountFactory(name="desk-b")  # no sync state yet
    AccountSyncState.objects.create(
        account=account,
        used_weight=42,
        stream_state="connected",
        stream_state_at=timezone.now(),
        stream_last_event_at=timezone.now(),
        last_reconcile_at=timezone.now(),
        last_reconcile_report={"outcome": "partial", "checked": 7, "opened": 2},
    )
    page = operator_client.get(ACCOUNTS).content.decode()
    assert "partial: checked 7, opened 2" in page
    assert "connected for" in page and ">42<" in page
    assert "not running" in page and "never" in page


# --- Orphans ------------------------------------------------------------------------------------------------------


@pytest.fixture
def orphan(db):
    return OrphanPosition.objects.create(
        account=AccountFactory(),
        symbol="SOLUSDT",
        quantity=Decimal("-3"),
        exchange_position=Decimal("-3"),
        entry_price=Decimal("150"),
    )


def test_recover_as_trade_opens_an_audited_trade(operator_client, operator, orphan):
    run_action(operator_client, ORPHANS, "recover_as_trade", [orphan])

    orphan.refresh_from_db()
    assert orphan.status == "recovered" and orphan.note == f"recovered by {operator.username}"
    trade = orphan.trade
    assert (trade.status, trade.side, trade.filled_qty, trade.entry_price) == (
        "open",
        "SELL",
        Decimal("3"),
        Decimal("150"),
    )
    event = trade.events.get()
    assert (event.source, event.to_status, event.actor) == ("admin", "open", operator.username)
    assert LogEntry.objects.filter(object_id=str(orphan.pk), user=operator).exists()


def test_recovering_twice_is_refused(operator_client, orphan):
    run_action(operator_client, ORPHANS, "recover_as_trade", [orphan])
    response = run_action(operator_client, ORPHANS, "recover_as_trade", [orphan])
    assert "not recovered" in " ".join(str(m) for m in response.wsgi_request._messages)
    assert Trade.objects.count() == 1


def test_dismiss_needs_a_reason_and_records_who(operator_client, operator, orphan):
    form = run_action(operator_client, ORPHANS, "dismiss", [orphan])
    assert form.status_code == 200 and "Dismiss orphan positions" in form.content.decode()
    empty = run_action(operator_client, ORPHANS, "dismiss", [orphan], apply="1", reason="")
    assert empty.status_code == 200
    orphan.refresh_from_db()
    assert orphan.status == "open"

    run_action(operator_client, ORPHANS, "dismiss", [orphan], apply="1", reason="opened by hand on purpose")

    orphan.refresh_from_db()
    assert orphan.status == "dismissed"
    assert orphan.note.startswith(f"dismissed by {operator.username} at ")
    assert orphan.note.endswith("opened by hand on purpose")
    assert not Trade.objects.exists()


def test_an_observer_cannot_recover_or_dismiss(observer_client, orphan):
    assert observer_client.get(ORPHANS).status_code == 200
    run_action(observer_client, ORPHANS, "recover_as_trade", [orphan])
    run_action(observer_client, ORPHANS, "dismiss", [orphan], apply="1", reason="x")
    orphan.refresh_from_db()
    assert orphan.status == "open" and not Trade.objects.exists()


# --- Reconcile runs -----------------------------------------------------------------------------------------------


def test_reconcile_runs_are_listed_filterable_and_read_only(operator_client):
    a, b = AccountFactory(), AccountFactory()
    ReconcileRun.objects.create(account=a, kind="pending", reason="beat", outcome="ok", report={"checked": 3})
    ReconcileRun.objects.create(
        account=b, kind="pending", reason="ws_connect", outcome="partial", report={"opened": 1, "weight_used": 5}
    )
    run = ReconcileRun.objects.create(account=a, kind="positions", reason="admin", outcome="error")

    def listed(**query):
        response = operator_client.get(RUNS, query)
        assert response.status_code == 200
        return response.context["cl"].result_count

    assert listed() == 3
    assert listed(account__id__exact=a.pk) == 2
    assert listed(reason="ws_connect") == 1
    assert listed(outcome="error") == 1
    assert listed(kind="positions") == 1
    assert operator_client.get(reverse("admin:reconciliation_reconcilerun_add")).status_code == 403
    assert operator_client.get(reverse("admin:reconciliation_reconcilerun_delete", args=[run.pk])).status_code == 403
    change = operator_client.get(reverse("admin:reconciliation_reconcilerun_change", args=[run.pk]))
    assert change.status_code == 200 and 'name="_save"' not in change.content.decode()


def test_staff_without_any_group_sees_nothing(client, django_user_model):
    user = django_user_model.objects.create_user("nobody", password="x", is_staff=True)
    client.force_login(user)
    for url in (ACCOUNTS, ORPHANS, RUNS, reverse("admin:trades_trade_changelist")):
        assert client.get(url).status_code == 403
