"""The desk's pages through Django's test client: the home page's panels (numbers, links, a fixed number of queries,
no secret, an unreadable weight store said so) and the exposure page (differences highlighted, "sync now" enqueues
the account's position sync, permissions)."""

import re
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from reconciliation import tasks
from reconciliation.models import AccountSyncState, OrphanPosition
from reconciliation.positions.last_sync import record_exchange_positions
from tests.factories import AccountFactory, TradeFactory
from trades import egress
from trades.models import Trade

pytestmark = pytest.mark.django_db

HOME = "/admin/"


def bucket_count(html: str, label: str) -> int:
    match = re.search(
        rf'data-bucket="{re.escape(escape(label))}">\s*<td>[^<]*</td>\s*<td class="desk-num">(?:<a [^>]*>)?(\d+)', html
    )
    assert match, label
    return int(match.group(1))


@pytest.fixture
def desk_account(db):
    return AccountFactory(name="desk-main", api_key="KEY-visible-tail-WXYZ", api_secret="SECRET-never-shown-1234")


def make_trades(account, n_each: int):
    now = timezone.now()
    for age in (timedelta(seconds=10), timedelta(minutes=3), timedelta(minutes=20), timedelta(hours=3)):
        for _ in range(n_each):
            TradeFactory(account=account, created_at=now - age)
    TradeFactory(account=account, status=Trade.Status.OPEN, filled_qty=Decimal("1"), needs_operator=True)


def test_home_shows_pending_by_age_flagged_orphans_streams_and_weight(operator_client, desk_account):
    make_trades(desk_account, 2)
    TradeFactory(account=desk_account, created_at=timezone.now() - timedelta(hours=2))  # a third one older than 1 h
    OrphanPosition.objects.create(account=desk_account, symbol="DOGEUSDT", quantity=-1000, exchange_position=-1000)
    now = timezone.now()
    AccountSyncState.objects.create(
        account=desk_account, stream_state="connected", stream_state_at=now, stream_heartbeat_at=now
    )
    quiet = AccountFactory(name="desk-quiet")
    host = "fapi.binance.com"
    egress.shared_budget().record_used(egress.egress_name(None, host), 345, int(time.time() * 1000))

    html = operator_client.get(HOME).content.decode()

    assert [bucket_count(html, label) for label in ("< 1 min", "1–5 min", "5–60 min", "> 1 h")] == [2, 2, 2, 3]
    assert 'href="/admin/trades/trade/?flagged=yes" class="desk-alert">1</a>' in html
    assert 'href="/admin/reconciliation/orphanposition/?status__exact=open" class="desk-alert">1</a>' in html
    streams = html[html.index('id="desk-streams"') :]
    assert re.search(
        rf'data-account="{desk_account.pk}">\s*<td>desk-main</td>\s*<td><span class="desk-badge desk-badge-ok">connected',
        streams,
    )
    assert re.search(
        rf'data-account="{quiet.pk}">\s*<td>desk-quiet</td>\s*<td><span class="desk-badge desk-badge-off">not running',
        streams,
    )
    assert f'href="/admin/desk/exposure/{desk_account.pk}/"' in streams
    assert re.search(rf'data-egress="default@{host}">\s*<td>default@{host}</td>\s*<td class="desk-num">345 ', html)
    assert "SECRET-never-shown-1234" not in html and "KEY-visible-tail-WXYZ" not in html


def test_a_bucket_links_to_exactly_its_trades(operator_client, desk_account):
    make_trades(desk_account, 1)
    html = operator_client.get(HOME).content.decode()
    link = re.search(r'data-bucket="5–60 min">\s*<td>[^<]*</td>\s*<td class="desk-num"><a href="([^"]+)"', html).group(
        1
    )
    listing = operator_client.get(link.replace("&amp;", "&"))
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 1


def test_a_stream_whose_process_is_gone_is_not_shown_connected(operator_client, desk_account):
    long_ago = timezone.now() - timedelta(hours=1)
    AccountSyncState.objects.create(
        account=desk_account, stream_state="connected", stream_state_at=long_ago, stream_heartbeat_at=long_ago
    )
    html = operator_client.get(HOME).content.decode()
    assert '<span class="desk-badge desk-badge-bad">no heartbeat</span>' in html
    assert "last said connected" in html


def test_the_home_page_costs_the_same_queries_for_10_or_100_trades(
    operator_client, desk_account, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_trades(desk_account, 2)
    with CaptureQueriesContext(connection) as few:
        operator_client.get(HOME)
    make_trades(desk_account, 25)
    with CaptureQueriesContext(connection) as many:
        assert operator_client.get(HOME).status_code == 200
    assert len(many) == len(few)


def test_an_unreadable_weight_store_is_said_not_raised(operator_client, desk_account, monkeypatch):
    class Broken(egress.WeightBudget):
        def acquire(self, *args): ...
        def record_used(self, *args): ...
        def mark_limited(self, *args): ...
        def limited_marks(self, *args): ...
        def clear(self): ...

        def used(self, egress_name, now_ms):
            raise ConnectionError("redis is down")

    monkeypatch.setattr(egress, "shared_budget", lambda: Broken())
    response = operator_client.get(HOME)
    assert response.status_code == 200
    assert "not readable: ConnectionError: redis is down" in response.content.decode()


def test_observers_see_the_home_panels(observer_client, desk_account):
    make_trades(desk_account, 1)
    html = observer_client.get(HOME).content.decode()
    assert 'id="desk-home"' in html and bucket_count(html, "> 1 h") == 1


# --- Exposure ---------------------------------------------------------------------------------------------------------


def exposure_url(account) -> str:
    return reverse("desk:exposure", args=[account.pk])


@pytest.fixture
def with_difference(desk_account):
    """Binance held 0.015 BTC and 0.5 ETH short at the last sync; our trades hold 0.010 BTC and the 0.5 ETH short."""
    record_exchange_positions(
        desk_account,
        {
            ("BTCUSDT", "BOTH"): (Decimal("0.015"), Decimal("60000")),
            ("ETHUSDT", "BOTH"): (Decimal("-0.5"), Decimal("3000")),
        },
        timezone.now(),
    )
    TradeFactory(account=desk_account, status=Trade.Status.OPEN, filled_qty=Decimal("0.010"))
    TradeFactory(
        account=desk_account,
        symbol="ETHUSDT",
        side="SELL",
        quantity=Decimal("0.5"),
        status="open",
        filled_qty=Decimal("0.5"),
    )
    OrphanPosition.objects.create(
        account=desk_account, symbol="BTCUSDT", quantity=Decimal("0.005"), exchange_position=Decimal("0.015")
    )
    return desk_account


def row_html(html: str, key: str) -> str:
    start = html.index(f'data-key="{key}"')
    return html[html.rindex("<tr", 0, start) : html.index("</tr>", start)]


def test_the_exposure_page_highlights_a_difference_and_links_what_resolves_it(operator_client, with_difference):
    html = operator_client.get(exposure_url(with_difference)).content.decode()

    btc, eth = row_html(html, "BTCUSDT:BOTH"), row_html(html, "ETHUSDT:BOTH")
    assert 'class="desk-differs"' in btc and ">+0.015<" in btc and ">+0.005<" in btc and "differs" in btc
    assert ">+0.01 <" in btc and "(1 trade)" in btc
    assert 'class="desk-in-sync"' in eth and ">-0.5<" in eth and "in sync" in eth
    assert "status__in=open%2Cpending" in btc and "symbol__exact=BTCUSDT" in btc
    assert "orphan +0.005: recover or dismiss" in btc and "/admin/reconciliation/orphanposition/?" in btc
    assert "orphan" not in eth
    assert 'id="desk-sync-now"' in html
    assert "SECRET-never-shown-1234" not in html


def test_the_orphan_link_lists_exactly_that_orphan(operator_client, with_difference):
    html = operator_client.get(exposure_url(with_difference)).content.decode()
    link = re.search(r'<a href="([^"]+)" class="desk-orphan">', html).group(1).replace("&amp;", "&")
    listing = operator_client.get(link)
    assert listing.context["cl"].result_count == 1
    html = listing.content.decode()
    assert '<span class="desk-badge desk-badge-bad">open</span>' in html  # an open orphan is bad news
    assert ">0.005<" in html and ">0.0050000000<" not in html


def test_sync_now_enqueues_the_accounts_position_sync_after_commit(
    operator_client, with_difference, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(tasks.sync_positions, "delay", lambda *args, **kwargs: sent.append((args, kwargs)))
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(reverse("desk:exposure_sync", args=[with_difference.pk]))
    assert response.status_code == 302 and response.url == exposure_url(with_difference)
    assert sent == [((with_difference.pk,), {"reason": "admin"})]
    from django.contrib.admin.models import LogEntry

    entry = LogEntry.objects.get(object_id=str(with_difference.pk))  # the account's History tells who asked
    assert entry.user.username == "night-operator" and "position sync requested" in entry.change_message
    page = operator_client.get(exposure_url(with_difference)).content.decode()
    assert "Position sync of desk-main queued" in page


def test_observers_see_the_exposure_but_cannot_sync(observer_client, with_difference, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.sync_positions, "delay", lambda *args, **kwargs: sent.append(args))
    html = observer_client.get(exposure_url(with_difference)).content.decode()
    assert "desk-differs" in html and 'id="desk-sync-now"' not in html
    assert observer_client.post(reverse("desk:exposure_sync", args=[with_difference.pk])).status_code == 403
    assert sent == []


def test_sync_now_is_post_only_and_the_page_needs_staff(operator_client, with_difference):
    from django.test import Client

    assert operator_client.get(reverse("desk:exposure_sync", args=[with_difference.pk])).status_code == 405
    anonymous = Client().get(exposure_url(with_difference))
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous.url


def test_staff_without_view_permissions_are_refused(client, django_user_model, with_difference):
    user = django_user_model.objects.create_user("intern", password="pw-for-tests-only", is_staff=True)
    client.force_login(user)
    assert client.get(exposure_url(with_difference)).status_code == 403
    assert 'id="desk-home"' not in client.get(HOME).content.decode()


def test_the_account_list_and_page_link_each_accounts_exposure(operator_client, desk_account):
    html = operator_client.get(reverse("admin:trades_account_changelist")).content.decode()
    assert f'href="{exposure_url(desk_account)}"' in html
    html = operator_client.get(reverse("admin:trades_account_change", args=[desk_account.pk])).content.decode()
    assert f'href="{exposure_url(desk_account)}" class="desk-exposure-link"' in html


def test_the_trade_page_reads_like_money_with_a_readable_audit_trail(operator_client, desk_account):
    from tests.factories import TradeEventFactory

    trade = TradeFactory(
        account=desk_account,
        status="open",
        filled_qty=Decimal("0.010"),
        entry_price=Decimal("60000.5"),
        exchange_update_time=1764690967123,
    )
    TradeEventFactory(
        trade=trade,
        source="reconcile",
        from_status="pending",
        to_status="open",
        filled_qty=Decimal("0.010"),
        payload={
            "exchange_status": "FILLED",
            "order_id": 42,
            "executed_qty": "0.010",
            "avg_price": "60000.50",
            "update_time": 1764690967123,
        },
    )
    html = operator_client.get(reverse("admin:trades_trade_change", args=[trade.pk])).content.decode()
    fields = html[html.index('<fieldset class="module aligned') : html.index("inline-group")]
    assert "60000.5000000000" not in fields and "0.0100000000" not in fields
    assert re.search(r'field-entry_price">.*?<div class="readonly">60000.5</div>', html, re.S)
    assert 'title="Binance time 1764690967123 ms = 2025-12-02 15:56:07.123 UTC"' in html
    assert '<span class="desk-fact-label">executedQty</span><span class="desk-fact">0.01</span>' in html
    assert '<span class="desk-fact-label">orderId</span><span class="desk-fact">42</span>' in html
    assert "<summary>raw JSON</summary>" in html
    assert re.search(r'desk-badge-wait">pending</span> → <span class="desk-badge desk-badge-ok">open', html)
