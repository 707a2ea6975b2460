"""An account's API secret is never rendered, to anyone, and its API key only masked (the last 4 characters): on the
list, the change page, the history page, in the admin's history messages — as an observer, an operator and a
superuser, logged in through the admin's login form."""

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from tests.access_helpers import ROLES, logged_in, post_form
from trades.models import Account

pytestmark = pytest.mark.django_db

SECRET = "sEcReT-never-rendered-7f3a9c2e41d84b6b"
KEY = "KEYHEAD0a1b2c3d4e5f60718293a4b5c6d7e8f9KEYTAIL9Z8Y"


@pytest.fixture
def account():
    return Account.objects.create(name="desk", api_key=KEY, api_secret=SECRET)


def assert_no_secret(html: str):
    assert SECRET not in html
    assert KEY not in html
    assert KEY[:8] not in html  # not even the head of the key
    for fragment in (SECRET[:12], SECRET[-12:]):
        assert fragment not in html


def pages(account):
    return {
        "list": reverse("admin:trades_account_changelist"),
        "change": reverse("admin:trades_account_change", args=[account.pk]),
        "history": reverse("admin:trades_account_history", args=[account.pk]),
    }


@pytest.mark.parametrize("role", ROLES)
def test_no_page_renders_the_secret_or_the_full_key(role, account):
    client = logged_in(role)
    LogEntry.objects.log_actions(client.user.pk, [account], 2, change_message="something happened")

    for name, url in pages(account).items():
        response = client.get(url)
        assert response.status_code == 200, (role, name)
        html = response.content.decode()
        assert_no_secret(html)
        if name != "history":
            assert "••••" + KEY[-4:] in html, (role, name)  # masked: the last 4 characters only

    change = client.get(pages(account)["change"]).content.decode()
    if role == "superuser":  # may change it: write-only inputs, nothing stored rendered in them
        assert 'name="api_secret"' in change and 'name="api_key"' in change
    else:  # view only: no input at all, the secret only said to be there
        assert 'name="api_secret"' not in change and 'name="api_key"' not in change
        assert "stored (write-only, never shown)" in change


@pytest.mark.parametrize("role", ROLES)
def test_search_does_not_find_accounts_by_key_or_secret(role, account):
    client = logged_in(role)
    for term in (KEY, KEY[-4:], SECRET):
        response = client.get(pages(account)["list"], {"q": term})
        assert response.status_code == 200
        assert response.context["cl"].result_count == 0, term


def test_changing_an_account_leaves_no_secret_in_the_history(account):
    client = logged_in("superuser")
    new_secret, new_key = "brand-new-secret-0f9e8d7c6b5a4321", "NEWKEY1234567890abcdefNEWKEYEND"

    response = post_form(
        client,
        pages(account)["change"],
        {"name": "desk", "api_key": new_key, "api_secret": new_secret, "is_active": "on"},
    )

    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.api_key, account.api_secret) == (new_key, new_secret)
    entry = LogEntry.objects.get(object_id=str(account.pk))
    for value in (new_secret, new_key, SECRET, KEY):
        assert value not in entry.change_message
        assert value not in entry.object_repr
    assert "API secret" in entry.get_change_message()  # what changed is named, not its value
    history = client.get(pages(account)["history"]).content.decode()
    for value in (new_secret, new_key, SECRET, KEY):
        assert value not in history


def test_saving_with_empty_key_and_secret_keeps_both_and_logs_no_change_to_them(account):
    client = logged_in("superuser")

    response = post_form(
        client, pages(account)["change"], {"name": "desk-renamed", "api_key": "", "api_secret": "", "is_active": "on"}
    )

    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.name, account.api_key, account.api_secret) == ("desk-renamed", KEY, SECRET)
    message = LogEntry.objects.get(object_id=str(account.pk)).get_change_message()
    assert "Name" in message and "API secret" not in message and "API key" not in message


def test_a_new_account_needs_a_key_and_a_secret():
    client = logged_in("superuser")
    response = post_form(
        client, reverse("admin:trades_account_add"), {"name": "new", "api_key": "", "api_secret": "", "is_active": "on"}
    )
    assert response.status_code == 200
    assert not Account.objects.filter(name="new").exists()


@pytest.mark.parametrize("role", ["observer", "operator"])
def test_view_only_users_cannot_change_an_account(role, account):
    client = logged_in(role)
    response = post_form(
        client,
        pages(account)["change"],
        {"name": "renamed", "api_key": "x" * 20, "api_secret": "stolen", "is_active": "on"},
    )
    assert response.status_code == 403
    account.refresh_from_db()
    assert (account.name, account.api_key, account.api_secret) == ("desk", KEY, SECRET)
