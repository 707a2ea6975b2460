"""How the desk writes money, times and states. Pure functions of a value; HTML comes out escaped and marked safe.

- `money`: a Decimal as written, without trailing zeros or exponent (DECIMAL(28,10) reads back as 0.0100000000).
- `local_time`, `exchange_time`: times in the operator's time zone (Django's current one: TIME_ZONE unless a request
  activated another); an exchange time (Binance's milliseconds) keeps its exact ms in the hover title.
- `badge`: a state as a coloured badge that still reads as text (colour is never the only signal).
- `event_facts`: a TradeEvent's payload as (label, value) rows, Binance's facts first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

EMPTY = "—"

# Badge colour per state (trade statuses, Binance order statuses, stream states, orphan statuses, desk states).
BADGE_KINDS = {
    "ok": {"open", "connected", "reconnected", "filled", "in sync", "resolved", "recovered", "ok"},
    "wait": {"pending", "connecting", "reconnecting", "new", "partially_filled", "partial", "unconfirmed", "stale"},
    "bad": {
        "failed",
        "deaf",
        "error",
        "expired",
        "rejected",
        "not_found",
        "flagged",
        "differs",
        "no heartbeat",
        "orphan",
    },
    "off": {"closed", "cancelled", "canceled", "dismissed", "stopped", "not running", "skipped"},
}


def money(value: Any) -> str:
    """1.5000000000 → "1.5", 100 → "100", 0E-10 → "0", None → "—". Never scientific notation, never rounded."""
    if value is None or value == "":
        return EMPTY
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return str(value)
    if not number.is_finite():
        return str(number)
    if number == 0:
        return "0"
    return format(number.normalize(), "f")


def signed_money(value: Any) -> str:
    """money() with an explicit + for positive quantities (long), as differences read."""
    text = money(value)
    return f"+{text}" if text not in (EMPTY, "0") and not text.startswith("-") else text


def local_time(moment: datetime | None, *, seconds: bool = True) -> str:
    """A timezone-aware datetime in the operator's time zone: 2026-12-02 16:56:07 CET."""
    if moment is None:
        return EMPTY
    local = timezone.localtime(moment) if timezone.is_aware(moment) else moment
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z").strip()


def exchange_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def exchange_time(ms: Any) -> SafeString | str:
    """Binance's epoch milliseconds (updateTime, E, T…) as local time; the raw ms and the UTC time with milliseconds
    in the title (hover) and a machine-readable datetime attribute."""
    if ms is None or ms == "":
        return EMPTY
    try:
        moment = exchange_datetime(int(ms))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ms)
    exact = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"
    return format_html(
        '<time class="desk-exchange-time" datetime="{}" title="Binance time {} ms = {}">{}</time>',
        moment.isoformat(timespec="milliseconds"),
        int(ms),
        exact,
        local_time(moment),
    )


def badge_kind(state: str) -> str:
    key = (state or "").strip().lower()
    for kind, states in BADGE_KINDS.items():
        if key in states:
            return kind
    return "info"


def badge(state: str, label: str | None = None, *, title: str = "", kind: str | None = None) -> SafeString:
    """A coloured badge carrying the state's own word (accessible without colour); `kind` overrides the colour."""
    text = label if label is not None else (state or "none")
    return format_html(
        '<span class="desk-badge desk-badge-{}"{}>{}</span>',
        kind or badge_kind(state),
        format_html(' title="{}"', title) if title else "",
        text,
    )


# What an audit event's payload says, Binance's facts first: (key, label, formatter).
_FACTS: list[tuple[str, str, Any]] = [
    ("exchange_status", "Binance status", lambda v: badge(str(v))),
    ("order_id", "orderId", str),
    ("client_order_id", "clientOrderId", str),
    ("executed_qty", "executedQty", money),
    ("filled_qty", "filled qty", money),
    ("avg_price", "avgPrice", money),
    ("update_time", "updateTime", exchange_time),
    ("exit_price", "exit price", money),
    ("realized_pnl", "realized PnL", money),
    ("exchange_position", "exchange position", money),
]
_KNOWN = {key for key, _, _ in _FACTS}


def event_facts(payload: Any) -> list[tuple[str, SafeString | str]]:
    """(label, value) rows of a TradeEvent payload: Binance's facts in a fixed order, then the rest as written
    (reason, correction, error, …). Values that are not plain text become compact JSON-ish text."""
    if not isinstance(payload, dict):
        return [("payload", str(payload))] if payload else []
    rows: list[tuple[str, SafeString | str]] = []
    for key, label, formatter in _FACTS:
        if payload.get(key) not in (None, ""):
            rows.append((label, formatter(payload[key])))
    for key, value in payload.items():
        if key in _KNOWN or value in (None, ""):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        rows.append((key.replace("_", " "), str(value)))
    return rows
