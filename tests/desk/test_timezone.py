"""The admin's times read in the operator's zone: the browser's zone, named in a cookie, is activated per request;
a missing or unknown one leaves TIME_ZONE (UTC), and nothing stored changes."""

from datetime import UTC, datetime

import pytest
from django.utils import timezone

from desk.timezone import COOKIE, zone_from
from tests.factories import AccountFactory, TradeFactory

pytestmark = pytest.mark.django_db

OPENED = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def trade():
    trade = TradeFactory(account=AccountFactory(name="tz-desk"))
    type(trade).objects.filter(pk=trade.pk).update(created_at=OPENED)
    return trade


def page(client, trade) -> str:
    return client.get(f"/admin/trades/trade/{trade.pk}/change/").content.decode()


def test_the_browsers_zone_is_used_for_the_pages_times(operator_client, trade):
    operator_client.cookies[COOKIE] = "Asia/Tokyo"
    html = page(operator_client, trade)
    assert "2026-12-02 21:00:00 JST" in html  # 12:00 UTC
    assert "Asia/Tokyo" in html  # the page says which zone it shows
    assert timezone.get_current_timezone_name() == "UTC"  # the request's zone did not leak past it


def test_no_cookie_or_an_unknown_zone_shows_utc(operator_client, trade):
    assert "2026-12-02 12:00:00 UTC" in page(operator_client, trade)
    operator_client.cookies[COOKIE] = "Mars/Olympus_Mons"
    assert "2026-12-02 12:00:00 UTC" in page(operator_client, trade)


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "x" * 100, "Not A Zone"])
def test_a_malformed_cookie_is_no_zone_and_no_error(name):
    assert zone_from(name) is None
