"""What applying an order snapshot came to: the rule's result names (`apply_order_snapshot` returns one), which are
also the counters of a reconcile's report (reconcile/reports.py has a field per counted result). The string values
are stored (reports, task results) and must not change."""

from __future__ import annotations

from enum import StrEnum


class Result(StrEnum):
    OPENED = "opened"
    PROGRESS = "progress"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REOPENED = "corrected"  # a failed/cancelled trade Binance shows filled or working
    NOTED = "noted"  # exchange facts recorded (order id, status, time), no state change, no event
    UNCHANGED = "unchanged"
    STALE = "stale"
    NOT_FOUND_IN_GRACE = "not_found_in_grace"
    NEEDS_OPERATOR = "needs_operator"  # the facts contradict each other; a person decides
    PRICED = "priced"  # an open trade's missing entry price filled in (bookkeeping, no event)
    IGNORED = "ignored"  # open/closed trades: nothing an order snapshot may change


# The results that change a trade's state, as a report's `changed` adds them up.
CHANGES = (Result.OPENED, Result.PROGRESS, Result.CANCELLED, Result.FAILED, Result.REOPENED)
# A reconcile looks up pending trades and trades failed "not found": an open trade's entry price is never its news.
COUNTED = frozenset(Result) - {Result.PRICED}


class PositionResult(StrEnum):
    """What a position sync did, per trade or gap: the counters of its report's `extra` (in this order)."""

    CLOSED = "closed"
    IN_SYNC = "in_sync"
    ORPHANS = "orphans"
    RECOVERED = "recovered"
    UNCONFIRMED = "unconfirmed"
    REDUCED = "reduced"
