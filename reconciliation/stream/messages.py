"""One user-data message: what it means (`classify`, pure) and, for an order update, the trade change it makes
through the one rule (`apply_order_event`, blocking DB work). `handle_message` chains the two, synchronously; it is
what tests and fuzzers call. None of them raises: a bad message is one WARNING line and the stream goes on.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from trades.models import Trade, TradeEvent

from .. import services
from ..orders.rules import SnapshotMismatch
from ..orders.snapshots import InvalidSnapshot, OrderSnapshot
from .state import recycle_connections

logger = logging.getLogger("reconciliation.user_stream")

ORDER_TRADE_UPDATE = "ORDER_TRADE_UPDATE"
ACCOUNT_UPDATE = "ACCOUNT_UPDATE"
LISTEN_KEY_EXPIRED = "listenKeyExpired"
# Binance pushes these too; nothing here needs them (TRADE_LITE repeats what ORDER_TRADE_UPDATE says).
IGNORED_EVENTS = frozenset(
    {
        "TRADE_LITE",
        "ACCOUNT_CONFIG_UPDATE",
        "MARGIN_CALL",
        "STRATEGY_UPDATE",
        "GRID_UPDATE",
        "CONDITIONAL_ORDER_TRIGGER_REJECT",
        "ALGO_UPDATE",
    }
)

EXCERPT_CHARS = 200
# listenKeys and API keys are long runs of letters and digits: never let one into a log line.
_SECRETISH = re.compile(r"[A-Za-z0-9]{24,}")

# Outcome kinds.
APPLIED = "applied"  # went through apply_order_snapshot; Outcome.result says what it did
NO_TRADE = "no_trade"  # an order the bot did not create
MISMATCH = "mismatch"  # the trade found by id disagrees with the event (symbol, other id)
DB_FAILED = "db_failed"  # bounded retries failed; a reconcile of the account was enqueued instead
ORDER = "order"  # classify only: an order update, not applied yet
POSITIONS = "positions"  # ACCOUNT_UPDATE with position changes: a (debounced) position sync is due
BALANCE = "balance"  # ACCOUNT_UPDATE without positions (funding fee, transfer): nothing to do
EXPIRED = "listen_key_expired"  # the stream is over: new listenKey, reconnect
IGNORED = "ignored"  # a known event type we do not use
MALFORMED = "malformed"  # not JSON, not an event, missing or unusable fields (warned)
UNKNOWN = "unknown"  # an event type we do not know (warned)
ERROR = "error"  # a bug of ours; logged with its traceback


@dataclass(frozen=True)
class Outcome:
    kind: str
    result: str = ""  # APPLIED: the rule's result (opened, progress, unchanged, stale, …)
    snapshot: OrderSnapshot | None = None  # ORDER: the parsed order

    def __str__(self) -> str:
        return f"{self.kind}:{self.result}" if self.result else self.kind


def excerpt(raw: object) -> str:
    """At most EXCERPT_CHARS printable characters of a payload, with anything key-like masked."""
    try:
        text = str(raw, "utf-8", "replace") if isinstance(raw, (bytes, bytearray, memoryview)) else str(raw)
    except Exception:  # noqa: BLE001 — an excerpt must never fail
        return "<unprintable>"
    text = _SECRETISH.sub("<masked>", text[: EXCERPT_CHARS * 4])
    printable = "".join(c if c.isprintable() and c.isascii() else ascii(c)[1:-1] for c in text[:EXCERPT_CHARS])
    return printable[:EXCERPT_CHARS]


def printable(value: object, limit: int = 80) -> str:
    """An untrusted field (a symbol, a client order id) for a log line: ASCII, one line, at most `limit` chars."""
    return "".join(c if c.isprintable() and c.isascii() else ascii(c)[1:-1] for c in str(value)[:limit])


def _skip(account_id: int, kind: str, why: str, raw: object) -> Outcome:
    logger.warning("user_stream skipped account=%s kind=%s why=%s excerpt=%s", account_id, kind, why, excerpt(raw))
    return Outcome(kind)


def classify(account_id: int, raw: str | bytes | bytearray) -> Outcome:
    """What one raw message means. Pure (no DB, no network); logs the WARNING for malformed and unknown ones."""
    try:
        event = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:  # ValueError covers JSONDecodeError and bad UTF-8
        return _skip(account_id, MALFORMED, f"not JSON ({type(exc).__name__})", raw)
    if isinstance(event, dict) and isinstance(event.get("data"), dict) and "stream" in event:
        event = event["data"]  # a combined-stream envelope
    if not isinstance(event, dict):
        return _skip(account_id, MALFORMED, "not a JSON object", raw)
    kind = event.get("e")
    if not isinstance(kind, str) or not kind:
        return _skip(account_id, MALFORMED, "no event type", raw)
    if kind == ORDER_TRADE_UPDATE:
        order = event.get("o")
        if not isinstance(order, dict):
            return _skip(account_id, MALFORMED, "ORDER_TRADE_UPDATE without an order", raw)
        try:
            return Outcome(ORDER, snapshot=OrderSnapshot.from_ws(order))
        except InvalidSnapshot as exc:
            return _skip(account_id, MALFORMED, f"unusable order ({str(exc)[:80]})", raw)
    if kind == ACCOUNT_UPDATE:
        data = event.get("a")
        if not isinstance(data, dict) or not isinstance(data.get("P", []), list):
            return _skip(account_id, MALFORMED, "ACCOUNT_UPDATE without an account object", raw)
        return Outcome(POSITIONS if data.get("P") else BALANCE)
    if kind == LISTEN_KEY_EXPIRED:
        return Outcome(EXPIRED)
    if kind in IGNORED_EVENTS:
        return Outcome(IGNORED)
    return _skip(account_id, UNKNOWN, f"unknown event type {kind[:40]!r}", raw)


def find_trade(account_id: int, snap: OrderSnapshot) -> Trade | None:
    """The account's trade for this order: by client order id first, else by order id + symbol."""
    trades = Trade.objects.filter(account_id=account_id)
    if snap.client_order_id:
        trade = trades.filter(client_order_id=snap.client_order_id).first()
        if trade is not None:
            return trade
    if snap.order_id is not None:
        return trades.filter(entry_order_id=snap.order_id, symbol=snap.symbol).first()
    return None


def apply_order_event(
    account_id: int,
    snap: OrderSnapshot,
    *,
    enqueue_reconcile: Callable[[int, str], object],
    tries: int = 3,
    retry_delay: float = 0.05,
) -> Outcome:
    """Apply one order update to the account's trade (source "ws"). Blocking: run it off the event loop.

    A failure (the DB raising, typically) is retried `tries` times in all; then the account gets a reconcile
    instead, so the fill is fetched from Binance rather than dropped."""
    for attempt in range(1, tries + 1):
        recycle_connections()  # a long-running process: drop connections that are broken or past CONN_MAX_AGE
        try:
            trade = find_trade(account_id, snap)
            if trade is None:
                logger.info(
                    "user_stream not_ours account=%s symbol=%s order_id=%s client_order_id=%s status=%s",
                    account_id,
                    printable(snap.symbol),
                    snap.order_id,
                    printable(snap.client_order_id),
                    snap.status,
                )
                return Outcome(NO_TRADE)
            result = services.apply_order_snapshot(trade, snap, TradeEvent.Source.WS)
            return Outcome(APPLIED, result)
        except (SnapshotMismatch, InvalidSnapshot) as exc:
            logger.warning(
                "user_stream mismatch account=%s order_id=%s client_order_id=%s: %s",
                account_id,
                snap.order_id,
                printable(snap.client_order_id),
                printable(exc, 200),
            )
            return Outcome(MISMATCH)
        except Exception as exc:  # noqa: BLE001 — DB errors above all; never lose the fill over any of them
            if attempt < tries:
                logger.warning(
                    "user_stream apply_failed account=%s order_id=%s attempt=%d/%d: %s: %s",
                    account_id,
                    snap.order_id,
                    attempt,
                    tries,
                    type(exc).__name__,
                    str(exc)[:200],
                )
                time.sleep(retry_delay * 2 ** (attempt - 1))
                continue
            logger.error(
                "user_stream apply_gave_up account=%s order_id=%s client_order_id=%s status=%s "
                "after %d tries (%s: %s); enqueueing a reconcile of the account",
                account_id,
                snap.order_id,
                printable(snap.client_order_id),
                snap.status,
                tries,
                type(exc).__name__,
                str(exc)[:200],
            )
        finally:
            recycle_connections()
    try:
        enqueue_reconcile(account_id, "ws_db_error")
    except Exception:  # noqa: BLE001
        logger.exception("user_stream could not enqueue a reconcile for account=%s; the periodic one will", account_id)
    return Outcome(DB_FAILED)


def handle_message(
    account_id: int,
    raw: str | bytes | bytearray,
    *,
    enqueue_reconcile: Callable[[int, str], object] | None = None,
    tries: int = 3,
    retry_delay: float = 0.05,
) -> Outcome:
    """The whole path of one message, synchronously: classify it and, for an order update, apply it. Never raises.

    Position syncs and reconnects are the stream's business: the outcome (POSITIONS, EXPIRED) tells the caller."""
    try:
        outcome = classify(account_id, raw)
        if outcome.kind != ORDER:
            return outcome
        assert outcome.snapshot is not None, "classify() gives every ORDER outcome its snapshot"
        return apply_order_event(
            account_id,
            outcome.snapshot,
            tries=tries,
            retry_delay=retry_delay,
            enqueue_reconcile=enqueue_reconcile or enqueue_reconcile_task,
        )
    except Exception:  # noqa: BLE001 — the contract is "never raises"
        logger.exception("user_stream handler_error account=%s excerpt=%s", account_id, excerpt(raw))
        return Outcome(ERROR)


# --- default side effects: Celery tasks (imported late: the stream process needs no worker code at import) -----------


def enqueue_reconcile_task(account_id: int, reason: str) -> None:
    from ..tasks import reconcile_account

    reconcile_account.delay(account_id, reason=reason)


def enqueue_position_sync_task(account_id: int, reason: str) -> None:
    from ..tasks import sync_positions

    sync_positions.delay(account_id, reason=reason)
