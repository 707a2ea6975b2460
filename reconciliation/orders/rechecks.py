"""Re-checks of trades failed as "not found on exchange".

Binance sometimes answers -2013 ("order does not exist") for minutes for an order that exists (after a timed-out or
503 placement). Past PENDING_NOT_FOUND_GRACE_SEC the rule fails such a trade and sets `Trade.not_found_recheck_at`
to the first delay of NOT_FOUND_RECHECK_SEC. The account's pending reconcile then looks each due trade up again
(`services.reconcile_pending_locked`, inside its weight budget); an order that shows up is applied by the one rule,
which corrects the trade (audited) and ends the re-checks.

Each look-up is claimed first (a compare-and-set that counts it and moves the due time to the next delay, or clears
it after the last), so a trade is looked up at most once per schedule entry whatever crashes or runs in parallel.
A look-up Binance answered with an error also uses its entry (the cost stays bounded); one refused by a rate limit
was never made, and gives its entry back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from trades.models import Trade

from .rules import NOT_FOUND_REASON


@dataclass(frozen=True)
class Claim:
    """One claimed look-up: the trade's re-check fields before and after the claim."""

    trade_id: int
    before: tuple[int, datetime]
    after: tuple[int, datetime | None]


def due_not_found_rechecks(account_id: int, *, now: datetime | None = None, limit: int = 1000) -> list[Trade]:
    """The account's failed-as-not-found trades whose re-check is due, earliest first. One query on the
    (account, not_found_recheck_at) index."""
    now = now or timezone.now()
    return list(
        Trade.objects.filter(account_id=account_id, not_found_recheck_at__lte=now, status=Trade.Status.FAILED).order_by(
            "not_found_recheck_at", "pk"
        )[:limit]
    )


def next_recheck_at(trade: Trade, now: datetime, schedule: Sequence[int] | None = None) -> datetime | None:
    """When the trade is due again after the look-up being claimed now, or None after the schedule's last entry.
    The delays count from the failure, which is the due time less the delay that made it due."""
    schedule = settings.NOT_FOUND_RECHECK_SEC if schedule is None else schedule
    made = trade.not_found_rechecks
    if made + 1 >= len(schedule) or trade.not_found_recheck_at is None:
        return None
    failed_at = trade.not_found_recheck_at - timedelta(seconds=schedule[made])
    return max(failed_at + timedelta(seconds=schedule[made + 1]), now)


def claim_not_found_recheck(trade: Trade, *, now: datetime | None = None) -> Claim | None:
    """Count one look-up of the trade and move its due time on; None if the trade changed meanwhile (another run
    claimed it, the rule corrected it) or the schedule has no entry left (then the re-checks simply end)."""
    now = now or timezone.now()
    made, due = trade.not_found_rechecks, trade.not_found_recheck_at
    current = Trade.objects.filter(
        pk=trade.pk,
        status=Trade.Status.FAILED,
        status_reason=NOT_FOUND_REASON,
        not_found_rechecks=made,
        not_found_recheck_at=due,
    )
    if due is None:
        return None
    if made >= len(settings.NOT_FOUND_RECHECK_SEC):  # the schedule was shortened since
        current.update(not_found_recheck_at=None)
        return None
    after = (made + 1, next_recheck_at(trade, now))
    if current.update(not_found_rechecks=after[0], not_found_recheck_at=after[1]) != 1:
        return None
    trade.not_found_rechecks, trade.not_found_recheck_at = after
    return Claim(trade.pk, (made, due), after)


def release_not_found_recheck(trade: Trade, claim: Claim) -> None:
    """Give a claimed look-up back (it was never made: Binance refused the request before executing it)."""
    made, due = claim.after
    if (
        Trade.objects.filter(
            pk=claim.trade_id, status=Trade.Status.FAILED, not_found_rechecks=made, not_found_recheck_at=due
        ).update(not_found_rechecks=claim.before[0], not_found_recheck_at=claim.before[1])
        == 1
    ):
        trade.not_found_rechecks, trade.not_found_recheck_at = claim.before
