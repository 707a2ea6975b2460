"""A real browser (Debian's chromium through Playwright) on the admin, against the live server and the sandbox:
log in, filter stale pending, "Verify on Binance" a trade the exchange filled, see it open with its audit row; read
the home page's panels and resolve a difference from an account's exposure page."""

import os
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from demo.browser import chromium_path, launch_chromium
from reconciliation import services, tasks
from tests.admin_helpers import staff_in
from tests.factories import TradeFactory
from tests.helpers import place
from trades.binance_client import BinanceFuturesClient
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


def test_operator_reads_the_home_page_and_resolves_a_difference_from_the_exposure_page(
    live_server, browser, account, binance, django_user_model, tmp_path, monkeypatch, settings
):
    """Home: pending by age, flagged, orphans, streams and weight with real numbers. Exposure: Binance's short no
    trade explains is highlighted; closed on the exchange, "Sync now" enqueues the position sync (run here at once)
    and the row reads in sync."""
    settings.SYNC_RECOVER_MISSING_POSITIONS = False
    user = staff_in(django_user_model, "night-operator", OPERATORS)
    user.set_password("correct horse battery")
    user.save()
    held = TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=None)
    place(held)  # MARKET: filled at once
    with BinanceFuturesClient.for_account(account) as client:  # someone sells by hand on the exchange
        client.place_order("ETHUSDT", "SELL", Decimal("0.5"), order_type="MARKET", client_order_id="by-hand-1")
    services.sync_positions_with_binance(account)  # opens the BTC trade, records Binance's positions, an orphan
    TradeFactory(account=account, symbol="XRPUSDT", created_at=timezone.now() - timedelta(minutes=12))  # stale
    TradeFactory(account=account, symbol="XRPUSDT", status=Trade.Status.FAILED, needs_operator=True)
    sent = []
    monkeypatch.setattr(tasks.sync_positions, "delay", lambda *args, **kwargs: sent.append((args, kwargs)))

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "night-operator")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_selector("#desk-home")

    pending = page.locator("#desk-pending tbody tr")
    assert [row.inner_text().split("\t")[-1].strip() for row in pending.all()] == ["0", "0", "1", "0"]
    assert page.locator("#desk-flagged .desk-number").inner_text().strip() == "1"
    assert page.locator("#desk-orphans .desk-number").inner_text().strip() == "1"
    stream = page.locator(f"#desk-streams tr[data-account='{account.pk}']")
    assert "not running" in stream.inner_text()
    weight = page.locator("#desk-weight tbody tr").first
    used = int(weight.locator("td.desk-num").first.inner_text().split()[0])
    assert used > 0  # the sync above spent weight on the sandbox's egress, counted in the shared budget
    page.screenshot(path=str(tmp_path / "home.png"), full_page=True)

    page.click("#desk-orphans .desk-number a")
    page.wait_for_url("**/orphanposition/?status__exact=open")
    assert "ETHUSDT" in page.locator("#result_list").inner_text()
    page.go_back()

    stream.locator("a", has_text="exposure").click()
    page.wait_for_url(f"**/admin/desk/exposure/{account.pk}/")
    eth = page.locator("tr[data-key='ETHUSDT:BOTH']")
    btc = page.locator("tr[data-key='BTCUSDT:BOTH']")
    assert eth.get_attribute("class") == "desk-differs"
    assert eth.locator(".desk-difference").inner_text().strip() == "-0.5"
    assert "differs" in eth.inner_text() and "recover or dismiss" in eth.inner_text()
    assert btc.get_attribute("class") == "desk-in-sync" and "+0.01" in btc.inner_text()
    red = eth.locator("td").first.evaluate("cell => getComputedStyle(cell).backgroundColor")
    assert red == "rgb(253, 226, 225)"  # highlighted
    page.screenshot(path=str(tmp_path / "exposure.png"), full_page=True)

    with BinanceFuturesClient.for_account(account) as client:  # the operator closes the hand-made short
        client.place_order("ETHUSDT", "BUY", Decimal("0.5"), order_type="MARKET", reduce_only=True)
    page.click("#desk-sync-now")
    page.wait_for_selector(".messagelist .success")
    assert "Position sync of" in page.locator(".messagelist").inner_text()
    assert sent == [((account.pk,), {"reason": "admin"})]
    tasks.sync_positions(*sent[0][0], **sent[0][1])  # what the worker does with the message

    page.reload()
    assert page.locator("tr[data-key='ETHUSDT:BOTH']").count() == 0  # flat on Binance, no trade: nothing to show
    assert page.locator("tr.desk-differs").count() == 0
    assert "no difference" in page.locator("#desk-differences").inner_text()
