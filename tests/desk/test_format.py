"""The desk's formatting: money as written, exchange times in the operator's zone with the ms on hover, badges."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from desk.format import badge, event_facts, exchange_time, local_time, money, signed_money


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0.0100000000"), "0.01"),
        (Decimal("100.0000000000"), "100"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0E-10"), "0"),
        (Decimal("-0.0000000000"), "0"),
        (Decimal("-0.5000000000"), "-0.5"),
        (Decimal("0.0000000100"), "0.00000001"),
        (Decimal("67000.12345678"), "67000.12345678"),
        ("0.5000", "0.5"),
        (3, "3"),
        (None, "—"),
    ],
)
def test_money_has_no_trailing_zeros_and_no_exponent(value, text):
    assert money(value) == text


def test_signed_money_marks_long_quantities():
    assert (signed_money(Decimal("0.50")), signed_money(Decimal("-0.5")), signed_money(Decimal("0"))) == (
        "+0.5",
        "-0.5",
        "0",
    )


def test_exchange_time_is_local_with_the_exact_milliseconds_on_hover():
    ms = 1764690967123  # 2025-12-02 15:56:07.123 UTC
    with timezone.override("Europe/Berlin"):
        html = str(exchange_time(ms))
    assert ">2025-12-02 16:56:07 CET</time>" in html
    assert 'title="Binance time 1764690967123 ms = 2025-12-02 15:56:07.123 UTC"' in html
    assert 'datetime="2025-12-02T15:56:07.123+00:00"' in html
    assert exchange_time(None) == "—"


def test_local_time_follows_the_current_time_zone():
    moment = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    with timezone.override("America/New_York"):
        assert local_time(moment) == "2026-07-01 08:00:00 EDT"


def test_a_badge_carries_its_word_and_a_colour_class_and_escapes():
    assert str(badge("failed")) == '<span class="desk-badge desk-badge-bad">failed</span>'
    assert "desk-badge-ok" in badge("open") and "desk-badge-wait" in badge("pending")
    assert "&lt;b&gt;" in badge("<b>")


def test_event_facts_read_binance_first_then_the_rest():
    payload = {
        "correction": "failed (not found), but Binance shows the order FILLED",
        "update_time": 1764690967123,
        "avg_price": "60000.50000",
        "executed_qty": "0.0100",
        "order_id": 42,
        "exchange_status": "FILLED",
        "client_order_id": "to-1",
    }
    labels = [label for label, _ in event_facts(payload)]
    assert labels == [
        "Binance status",
        "orderId",
        "clientOrderId",
        "executedQty",
        "avgPrice",
        "updateTime",
        "correction",
    ]
    values = dict(event_facts(payload))
    assert values["executedQty"] == "0.01" and values["avgPrice"] == "60000.5"
