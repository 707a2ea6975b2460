"""The user-data event types the stream subscribes to (`&events=` on /private/ws): what USER_STREAM_EVENTS defaults to
(tradeops/settings.py reads DEFAULT_EVENTS from here), and how its value is read. No Django: settings import it."""

from __future__ import annotations

from collections.abc import Iterable

# Event types the stream acts on: always subscribed, whatever USER_STREAM_EVENTS says.
REQUIRED_EVENTS = ("ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE", "listenKeyExpired")
# ALGO_ORDER_UPDATE: the subscription name of the Algo service's updates (their frames say "e": "ALGO_UPDATE").
DEFAULT_EVENTS = REQUIRED_EVENTS + ("TRADE_LITE", "ALGO_ORDER_UPDATE", "ACCOUNT_CONFIG_UPDATE", "MARGIN_CALL")


def parse_events(value: str | Iterable[object] | None) -> tuple[str, ...]:
    """USER_STREAM_EVENTS (a comma- or "/"-separated string, or a list) → the event types, required ones first, each
    once, in order. Names are Binance's event types, case-sensitive (listenKeyExpired)."""
    if isinstance(value, str):
        names = [part.strip() for part in value.replace(",", "/").split("/")]
    else:
        names = [str(part).strip() for part in value or ()]
    return tuple(dict.fromkeys([*REQUIRED_EVENTS, *(name for name in names if name)]))
