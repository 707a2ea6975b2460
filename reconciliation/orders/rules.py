"""THE rule: what a Binance order snapshot means for a trade (docs/DESIGN.md "The one rule" state table), as a pure decision.

`decide(trade, snapshot, now)` reads only the trade's current fields and returns the compare-and-set to make, or
None. `services.apply_order_snapshot` executes it; nothing else decides a trade's state from an order.

| from              | Binance says                                             | to                               |
|-------------------|----------------------------------------------------------|----------------------------------|
| pending           | FILLED                                                   | open (qty, avg price, order id)  |
| pending           | NEW / PARTIALLY_FILLED                                   | pending (filled_qty updated)     |
| pending           | CANCELED / EXPIRED / EXPIRED_IN_MATCH, executedQty > 0   | open with the filled quantity    |
| pending           | CANCELED / EXPIRED / EXPIRED_IN_MATCH, executedQty = 0   | cancelled                        |
| pending           | REJECTED                                                 | failed                           |
| pending           | -2013, order sent (or trade created, if never sent)      | failed ("not found on exchange") |
|                   | longer ago than the grace period                         |                                  |
| failed/cancelled  | a fill, or the order still working                       | open / pending (a correction:    |
|                   |                                                          | our inference was wrong)         |
| failed "not found"| the order ended with nothing filled                      | cancelled (a correction)         |
| open, no entry    | an average price for the quantity the trade holds        | open (entry_price filled in)     |
| price             |                                                          |                                  |

Deadlines (Trade.cancel_after, the database's clock): a trade reopened by a correction keeps its deadline or gets one
(ENTRY_TIMEOUT_SEC from the correction), and a trade failed "not found" is due one more cancel by client order id
once its deadline has passed (cancel_sent_at cleared): a live order is never forgotten because we misread Binance.

Never backwards: a snapshot older (updateTime) than the last one applied is ignored, filled_qty never decreases,
open and closed trades never change status by an order snapshot. Money is Decimal throughout.

The last row is bookkeeping, not a state change: Binance's answers to placing and cancelling no longer carry
`avgPrice` (2026-07; docs/DESIGN.md "What Binance really does" F25), so a partial fill applied from a cancel answer opens the trade without a price,
and the next look-up (the cancel's verification, the stream's event, an operator's verify) fills it in. No audit
event is written for it — the status does not change and the opening event already records the fill; the service
logs it at INFO. It writes only while the entry price is still missing (compare-and-set), only for a snapshot of
the same filled quantity (an average of another quantity would be another price), and never moves anything else.

A trade failed "not found on exchange" carries the time of its first re-check (`recheck_sec`, the
NOT_FOUND_RECHECK_SEC schedule; `reconciliation.orders.rechecks` makes the look-ups); any snapshot that shows its order
exists ends the re-checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Coalesce

from trades.db import DatabaseNow
from trades.models import Trade

from . import snapshots as s
from .results import Result
from .snapshots import OrderSnapshot

NOT_FOUND_REASON = "not found on exchange"

# The results, by their short names here (results.py defines them, and says which a report counts).
OPENED = Result.OPENED
PROGRESS = Result.PROGRESS
CANCELLED = Result.CANCELLED
FAILED = Result.FAILED
REOPENED = Result.REOPENED
NOTED = Result.NOTED
UNCHANGED = Result.UNCHANGED
STALE = Result.STALE
NOT_FOUND_IN_GRACE = Result.NOT_FOUND_IN_GRACE
NEEDS_OPERATOR = Result.NEEDS_OPERATOR
PRICED = Result.PRICED
IGNORED = Result.IGNORED


@dataclass
class Decision:
    result: Result
    expected_status: str
    changes: dict
    condition: Q | None = None
    audited: bool = True  # False: a bookkeeping update (no state change), so no event
    payload: dict = field(default_factory=dict)


class SnapshotMismatch(ValueError):
    """The snapshot is about another order than this trade's."""


def check_same_order(trade: Trade, snap: OrderSnapshot) -> None:
    if snap.symbol != trade.symbol:
        raise SnapshotMismatch(f"symbol {snap.symbol} is not the trade's {trade.symbol}")
    matched = False
    if snap.client_order_id and trade.client_order_id:
        if snap.client_order_id != trade.client_order_id:
            raise SnapshotMismatch("client order id differs")
        matched = True
    if snap.order_id is not None and trade.entry_order_id is not None:
        if snap.order_id != trade.entry_order_id:
            raise SnapshotMismatch("order id differs")
        matched = True
    if not matched:
        raise SnapshotMismatch("no id in common with the trade")


def decide(
    trade: Trade, snap: OrderSnapshot, now: datetime, *, grace_sec: int, recheck_sec: Sequence[int] = ()
) -> Decision | Result:
    """The compare-and-set to make for `snap`, or the result name when there is nothing to write. `recheck_sec`:
    the not-found re-check schedule (delays after the failure)."""
    if snap.update_time is not None and trade.exchange_update_time is not None:
        if snap.update_time < trade.exchange_update_time:
            return STALE
    if trade.status == Trade.Status.PENDING:
        return _from_pending(trade, snap, now, grace_sec, recheck_sec)
    if trade.status in (Trade.Status.FAILED, Trade.Status.CANCELLED):
        return _correction(trade, snap, now)
    if trade.status == Trade.Status.OPEN and trade.entry_price is None:
        return _fill_entry_price(trade, snap)
    return IGNORED


def _fill_entry_price(trade: Trade, snap: OrderSnapshot) -> Decision | Result:
    """An open trade opened without a price (from a place or cancel answer): the average price of a snapshot that
    shows the same filled quantity is its entry price."""
    if snap.avg_price is None or snap.executed_qty != trade.filled_qty:
        return IGNORED
    return Decision(
        PRICED,
        Trade.Status.OPEN,
        {"entry_price": snap.avg_price},
        condition=Q(entry_price__isnull=True, filled_qty=snap.executed_qty),
        audited=False,
    )


def in_not_found_grace(trade: Trade, now: datetime, grace_sec: int) -> bool:
    """Whether -2013 ("order does not exist") may still mean "not visible yet": within grace_sec of the order being
    sent (of the trade's creation, while it was never sent). Queued placements can run long after creation.

    `now` must be on the clock placed_at was taken on: the database's (services pass trades.db.db_now() for a -2013),
    so a worker whose own clock jumped minutes ahead cannot skip the grace."""
    return now - (trade.placed_at or trade.created_at) < timedelta(seconds=grace_sec)


def is_failed_not_found(trade: Trade) -> bool:
    """Failed by our inference from -2013, not by anything Binance said about the order. The inference can be wrong
    (Binance answers -2013 for minutes for orders that exist), so such a trade is re-checked on a schedule and its
    deadline still sends one cancel by client order id; the exchange's answer corrects it."""
    return trade.status == Trade.Status.FAILED and trade.status_reason == NOT_FOUND_REASON


def deadline_if_reopened() -> Coalesce:
    """A reopened trade's deadline, computed in the UPDATE: the one it had, else ENTRY_TIMEOUT_SEC from now (the
    database's clock). The bot had given up on this order; it is cancelled at the latest then."""
    later = ExpressionWrapper(
        DatabaseNow() + timedelta(seconds=settings.ENTRY_TIMEOUT_SEC), output_field=DateTimeField()
    )
    return Coalesce(F("cancel_after"), later)


def _from_pending(
    trade: Trade, snap: OrderSnapshot, now: datetime, grace_sec: int, recheck_sec: Sequence[int]
) -> Decision | Result:
    if snap.status == s.FILLED or (snap.status in s.ENDED_UNFILLED_OR_PARTIAL and snap.executed_qty > 0):
        return _open(trade, snap, now, OPENED)
    if snap.status in s.ENDED_UNFILLED_OR_PARTIAL:
        return _end(trade, snap, Trade.Status.CANCELLED, f"{snap.status} on exchange, nothing filled", CANCELLED)
    if snap.status == s.REJECTED:
        detail = snap.raw.get("msg") if isinstance(snap.raw, dict) else None
        return _end(trade, snap, Trade.Status.FAILED, f"rejected by exchange{': ' + detail if detail else ''}", FAILED)
    if snap.status == s.NOT_FOUND:
        if in_not_found_grace(trade, now, grace_sec):
            return NOT_FOUND_IN_GRACE  # Binance answers -2013 for a while right after placing
        if trade.filled_qty > 0 or trade.exchange_status not in ("", s.PLACING):
            # We saw this order on the exchange before: "does not exist" now is not "never placed". Don't guess.
            return NEEDS_OPERATOR
        decision = _end(trade, snap, Trade.Status.FAILED, NOT_FOUND_REASON, FAILED)
        decision.changes["cancel_sent_at"] = None  # its deadline sends one cancel after this inference (the backstop)
        # Binance can answer -2013 for minutes for an order that exists: look again on the schedule.
        decision.changes |= {
            "not_found_rechecks": 0,
            "not_found_recheck_at": now + timedelta(seconds=recheck_sec[0]) if recheck_sec else None,
        }
        # Only if the placement state is still what this decision read: a placement claimed meanwhile (the order
        # on its way to Binance) must not be failed by an answer from before it was sent.
        assert decision.condition is not None  # _end's decisions always carry _monotonic's
        decision.condition &= Q(exchange_status=trade.exchange_status)
        return decision
    # NEW / PARTIALLY_FILLED: still working.
    if snap.executed_qty > trade.filled_qty:
        changes = _exchange_facts(trade, snap) | {"filled_qty": snap.executed_qty}
        if snap.avg_price is not None:
            changes["entry_price"] = snap.avg_price
        return Decision(
            PROGRESS,
            Trade.Status.PENDING,
            changes,
            condition=_monotonic(snap) & Q(filled_qty__lt=snap.executed_qty),
            payload=_payload(snap),
        )
    facts = _exchange_facts(trade, snap)
    if any(getattr(trade, name) != value for name, value in facts.items()):
        return Decision(NOTED, Trade.Status.PENDING, facts, condition=_monotonic(snap), audited=False)
    return UNCHANGED


def _correction(trade: Trade, snap: OrderSnapshot, now: datetime) -> Decision | Result:
    """A failed or cancelled trade whose order Binance shows filled or still working: our earlier inference (not
    found, a manual mark) was wrong, and the exchange's truth wins — never leave a real fill unrecorded."""
    filled = snap.status == s.FILLED or (snap.status in s.ENDED_UNFILLED_OR_PARTIAL and snap.executed_qty > 0)
    if filled:
        decision = _open(trade, snap, now, REOPENED, expected=trade.status)
        decision.payload = _correction_payload(trade, snap)
        return decision
    if is_failed_not_found(trade) and snap.status in s.ENDED_UNFILLED_OR_PARTIAL:
        # "Not found" was our inference; Binance now shows the order, ended with nothing filled: cancelled.
        decision = _end(trade, snap, Trade.Status.CANCELLED, f"{snap.status} on exchange, nothing filled", REOPENED)
        decision.expected_status = Trade.Status.FAILED
        assert decision.condition is not None  # _end's decisions always carry _monotonic's
        decision.condition &= Q(status_reason=NOT_FOUND_REASON)
        decision.payload = _correction_payload(trade, snap)
        return decision
    if snap.is_working:
        if (
            snap.update_time is not None
            and snap.update_time == trade.exchange_update_time
            and trade.exchange_status in s.ENDED
        ):
            # Same millisecond as the end we applied (Binance stamps NEW and EXPIRED of an IOC/GTX order alike):
            # an ended order never works again. (The same NEW we had recorded before a -2013 or a manual mark is
            # not stale: that order is still resting.)
            return STALE
        changes = _exchange_facts(trade, snap) | {
            "status": Trade.Status.PENDING,
            "status_reason": "",
            "filled_qty": snap.executed_qty,
            # A live order we had given up on: it keeps or gets a deadline, and the sweep may send its cancel anew.
            "cancel_after": deadline_if_reopened(),
            "cancel_sent_at": None,
        }
        if snap.avg_price is not None:
            changes["entry_price"] = snap.avg_price
        condition = _monotonic(snap)
        if snap.update_time is not None:  # and not an end applied at the same millisecond meanwhile
            condition &= ~Q(exchange_update_time=snap.update_time, exchange_status__in=s.ENDED)
        return Decision(REOPENED, trade.status, changes, condition=condition, payload=_correction_payload(trade, snap))
    if trade.not_found_recheck_at is not None and snap.status != s.NOT_FOUND:
        # The order exists and what it says changes nothing here (REJECTED): no need to look again.
        return Decision(NOTED, trade.status, _exchange_facts(trade, snap), condition=_monotonic(snap), audited=False)
    return UNCHANGED


def _open(
    trade: Trade, snap: OrderSnapshot, now: datetime, result: Result, expected: str = Trade.Status.PENDING
) -> Decision:
    changes = _exchange_facts(trade, snap) | {
        "status": Trade.Status.OPEN,
        "filled_qty": snap.executed_qty,
        "opened_at": now,
        "status_reason": "" if snap.status == s.FILLED else f"{snap.status} after a partial fill",
    }
    if snap.avg_price is not None:
        changes["entry_price"] = snap.avg_price
    return Decision(result, expected, changes, condition=_monotonic(snap), payload=_payload(snap))


def _end(trade: Trade, snap: OrderSnapshot, status: str, reason: str, result: Result) -> Decision:
    changes = _exchange_facts(trade, snap) | {"status": status, "status_reason": reason[:255]}
    return Decision(result, Trade.Status.PENDING, changes, condition=_monotonic(snap), payload=_payload(snap))


def _exchange_facts(trade: Trade, snap: OrderSnapshot) -> dict:
    facts: dict[str, object] = {"exchange_status": snap.status}
    if trade.not_found_recheck_at is not None and snap.status != s.NOT_FOUND:
        facts["not_found_recheck_at"] = None  # the order exists: re-checks are over
    if snap.update_time is not None:
        facts["exchange_update_time"] = snap.update_time
    if snap.order_id is not None and trade.entry_order_id is None:
        facts["entry_order_id"] = snap.order_id
    return facts


def _monotonic(snap: OrderSnapshot) -> Q:
    """The write only happens if no newer snapshot was applied meanwhile (by another path)."""
    if snap.update_time is None:
        return Q()
    return Q(exchange_update_time__isnull=True) | Q(exchange_update_time__lte=snap.update_time)


def _correction_payload(trade: Trade, snap: OrderSnapshot) -> dict:
    """The evidence of a correction, with why: what we had inferred, and what Binance shows instead."""
    inferred = f"{trade.status} ({trade.status_reason or 'no reason recorded'})"
    reason = f"{inferred}, but Binance shows the order {snap.status}"
    return _payload(snap) | {"correction": reason[:255]}


def _payload(snap: OrderSnapshot) -> dict:
    return {
        "exchange_status": snap.status,
        "order_id": snap.order_id,
        "client_order_id": snap.client_order_id,
        "executed_qty": str(snap.executed_qty),
        "avg_price": None if snap.avg_price is None else str(snap.avg_price),
        "update_time": snap.update_time,
        **({"error": snap.raw} if snap.status in (s.NOT_FOUND,) or "code" in snap.raw else {}),
    }
