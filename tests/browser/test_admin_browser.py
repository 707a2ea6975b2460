"""A real browser (Debian's chromium through Playwright) on the admin, against the live server and the sandbox:
log in, filter stale pending, "Verify on Binance" a trade the exchange filled, see it open with its audit row."""

import os
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from demo.browser import chromium_path, launch_chromium
from tests.admin_helpers import staff_in
from tests.factories import TradeFactory
from tests.helpers import place
from trades.models import Trade
from trades.permissions import OPERATORS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # Skipped where chromium is missing, except in CI (CI=true), which installs it: there a missing browser fails.
    pytest.mark.skipif(
        chromium_path() is None and not os.environ.get("CI"),
        reason="needs chromium (apt-get install chromium; .ci/run installs it) — no browser download",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (requirements-dev.txt)")


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the ORM calls made here between browser steps are
    # plain synchronous ones (the live server answers from its own thread).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def test_operator_verifies_a_stale_pending_trade_the_exchange_filled(
    live_server, browser, account, binance, django_user_model, tmp_path
):
    user = staff_in(django_user_model, "night-operator", OPERATORS)
    user.set_password("correct horse battery")
    user.save()
    stale = TradeFactory(
        account=account, symbol="BTCUSDT", price=Decimal("60000"), created_at=timezone.now() - timedelta(minutes=12)
    )
    place(stale)
    binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=stale.client_order_id)
    fresh = TradeFactory(account=account, symbol="ETHUSDT", price=Decimal("3000"))

    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "night-operator")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")

    page.goto(f"{live_server.url}/admin/trades/trade/")
    page.click("text=pending > 5 min")
    page.wait_for_url("**stale=5**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert stale.client_order_id in rows.first.inner_text()
    assert fresh.client_order_id not in page.content()

    rows.first.locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "verify_on_binance")
    page.click("button[name=index]")
    result = page.locator(f"tr.verify-row[data-trade='{stale.pk}']")
    result.wait_for()
    assert "FILLED" in result.inner_text()
    assert result.locator(".verify-result").inner_text().strip() == "opened"
    page.screenshot(path=str(tmp_path / "verify.png"))

    page.click(f"tr.verify-row[data-trade='{stale.pk}'] a")
    page.wait_for_url(f"**/trades/trade/{stale.pk}/change/")
    assert page.locator(".field-status .readonly").inner_text().strip() == "open"
    audit = page.locator(".inline-group tbody tr", has_text="night-operator")
    assert audit.count() == 1
    assert "admin" in audit.inner_text() and "pending" in audit.inner_text() and "open" in audit.inner_text()

    stale.refresh_from_db()
    assert stale.status == Trade.Status.OPEN
    assert list(stale.events.values_list("source", "actor")) == [("admin", "night-operator")]
