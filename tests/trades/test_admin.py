import pytest
from django.urls import reverse

from tests.factories import AccountFactory, TradeEventFactory, TradeFactory
from trades.models import Account

pytestmark = pytest.mark.django_db


def test_account_change_page_never_renders_the_secret(admin_client_logged_in):
    secret = "very-secret-value-that-must-not-render-42"
    account = Account.objects.create(name="desk", api_key="AKEY1234567890ZZ", api_secret=secret)

    for url in (reverse("admin:trades_account_change", args=[account.pk]), reverse("admin:trades_account_changelist")):
        response = admin_client_logged_in.get(url)
        assert response.status_code == 200
        assert secret not in response.content.decode()

    listing = admin_client_logged_in.get(reverse("admin:trades_account_changelist")).content.decode()
    assert "AKEY1234567890ZZ" not in listing and "AKEY" not in listing  # masked but for the last 4 characters
    assert "••••90ZZ" in listing


def test_saving_an_account_without_a_secret_keeps_the_stored_one(admin_client_logged_in):
    account = Account.objects.create(name="desk", api_key="k", api_secret="keep-me")
    response = admin_client_logged_in.post(
        reverse("admin:trades_account_change", args=[account.pk]),
        {"name": "desk-renamed", "api_key": "k", "api_secret": "", "is_active": "on"},
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.name, account.api_secret) == ("desk-renamed", "keep-me")


def test_new_account_needs_a_secret(admin_client_logged_in):
    response = admin_client_logged_in.post(
        reverse("admin:trades_account_add"), {"name": "new", "api_key": "k", "api_secret": "", "is_active": "on"}
    )
    assert response.status_code == 200
    assert not Account.objects.filter(name="new").exists()


def test_trade_pages_render(admin_client_logged_in):
    trade = TradeFactory(entry_order_id=4242)
    TradeEventFactory(trade=trade)
    changelist = reverse("admin:trades_trade_changelist")

    assert admin_client_logged_in.get(changelist).status_code == 200
    for query in ({"status__exact": "pending"}, {"q": trade.client_order_id}, {"q": "4242"}, {"q": "not-a-number"}):
        response = admin_client_logged_in.get(changelist, query)
        assert response.status_code == 200, query
    assert trade.client_order_id in admin_client_logged_in.get(changelist, {"q": "4242"}).content.decode()

    change = admin_client_logged_in.get(reverse("admin:trades_trade_change", args=[trade.pk]))
    assert change.status_code == 200
    assert "pending" in change.content.decode()


def test_trade_event_pages_render_read_only(admin_client_logged_in):
    event = TradeEventFactory()
    assert admin_client_logged_in.get(reverse("admin:trades_tradeevent_changelist")).status_code == 200
    assert admin_client_logged_in.get(reverse("admin:trades_tradeevent_change", args=[event.pk])).status_code == 200
    assert admin_client_logged_in.get(reverse("admin:trades_tradeevent_add")).status_code == 403


def test_staff_without_permissions_cannot_see_accounts(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    client.force_login(user)
    AccountFactory()
    assert client.get(reverse("admin:trades_account_changelist")).status_code == 403


def test_trades_show_position_side_closed_quantity_and_the_close_reason(admin_client_logged_in):
    from decimal import Decimal

    TradeFactory(
        symbol="BTCUSDT",
        side="SELL",
        position_side="SHORT",
        status="open",
        quantity=Decimal("0.010"),
        filled_qty=Decimal("0.010"),
        closed_qty=Decimal("0.004"),
        status_reason="partly closed by liquidation",
    )
    listing = admin_client_logged_in.get(reverse("admin:trades_trade_changelist")).content.decode()
    assert (
        "SHORT (hedge mode)" in listing
        and ">0.004<" in listing
        and "0.0040000000" not in listing
        and "partly closed by liquidation" in listing
    )
    filtered = admin_client_logged_in.get(reverse("admin:trades_trade_changelist"), {"position_side": "LONG"})
    assert "partly closed by liquidation" not in filtered.content.decode()


def test_accounts_show_the_position_mode_binance_reported_and_nobody_types_it_in(admin_client_logged_in):
    account = Account.objects.create(name="desk", api_key="k", api_secret="s")
    assert (
        "not read from Binance yet"
        in admin_client_logged_in.get(reverse("admin:trades_account_changelist")).content.decode()
    )
    Account.objects.filter(pk=account.pk).update(dual_side_position=True)
    page = admin_client_logged_in.get(reverse("admin:trades_account_change", args=[account.pk])).content.decode()
    assert "hedge (LONG / SHORT)" in page and 'name="dual_side_position"' not in page
