"""Take the README's admin screenshots (docs/screenshots/*.png) from a running `make run`, after its story:

    DJANGO_DEBUG=1 BINANCE_FUTURES_REST_URL=http://127.0.0.1:9900 .venv/bin/python -m demo.screenshots \\
        --base-url http://127.0.0.1:8000 --out docs/screenshots

It logs in as the dev admin (var/dev-admin-password), stages what an operator meets at night — a pending trade whose
fill Binance has but tradeops missed, and an exchange position no trade explains — and captures the pages: the
home page's panels, the trade list and its actions, the audit trail, accounts, orphans, the account's exposure and
the reconcile runs.
"""

import argparse
import os
from pathlib import Path


def stage(control):
    """A pending trade filled on the exchange with its event lost, and an orphan position (a manual order)."""
    from decimal import Decimal

    from reconciliation import services
    from trades.binance_client import BinanceFuturesClient
    from trades.models import Account

    account = Account.objects.get(name="demo")
    control.pause_events(account.api_key)
    try:
        trade = services.create_pending_trade(account, "XRPUSDT", "BUY", Decimal("100"), Decimal("0.5"))
        services.place_entry_order(trade)
        control.fill_order(account.api_key, "XRPUSDT", client_order_id=trade.client_order_id)
        with BinanceFuturesClient.for_account(account) as client:  # someone trades by hand on the exchange
            client.place_order("DOGEUSDT", "SELL", Decimal("1000"), order_type="MARKET", client_order_id="by-hand-1")
    finally:
        control.resume_events(account.api_key)
    return trade


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="docs/screenshots")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeops.settings")
    import django

    django.setup()
    from django.conf import settings
    from playwright.sync_api import sync_playwright

    from demo.browser import launch_chromium
    from demo.story import sandbox_url
    from sandbox.control import SandboxControl

    trade = stage(SandboxControl(sandbox_url()))
    password = (settings.VAR_DIR / "dev-admin-password").read_text().strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    admin = f"{args.base_url}/admin/"
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"  # the ORM is not used while the browser runs; playwright's loop
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1720, "height": 860})
        page.goto(f"{admin}login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", password)
        page.click("input[type=submit]")

        def shot(name, full=False):
            page.screenshot(path=str(out / f"{name}.png"), full_page=full)

        page.goto(f"{admin}trades/trade/")
        shot("01-trades")
        page.goto(f"{admin}trades/trade/?status__exact=pending")
        page.check(f"input[name=_selected_action][value='{trade.pk}']")
        page.select_option("select[name=action]", "mark_manually")
        page.click("button[name=index]")
        shot("02-mark-manually")
        page.goto(f"{admin}trades/trade/?status__exact=pending")
        page.check(f"input[name=_selected_action][value='{trade.pk}']")
        page.select_option("select[name=action]", "verify_on_binance")
        page.click("button[name=index]")
        shot("03-verify-on-binance")
        page.goto(f"{admin}trades/trade/{trade.pk}/change/")
        shot("04-trade-with-audit", full=True)
        page.goto(f"{admin}trades/account/")
        page.check("#action-toggle")
        page.select_option("select[name=action]", "sync_positions_now")
        page.click("button[name=index]")
        shot("05-accounts-after-sync")
        page.goto(f"{admin}reconciliation/orphanposition/")
        shot("06-orphan-positions")
        page.goto(admin)  # after the sync: the orphan counts
        shot("00-home", full=True)
        page.goto(f"{admin}desk/exposure/{trade.account_id}/")
        shot("08-exposure", full=True)
        page.goto(f"{admin}reconciliation/reconcilerun/")
        shot("07-reconcile-runs")
        browser.close()
    print(f"screenshots in {out}/")


if __name__ == "__main__":
    main()
