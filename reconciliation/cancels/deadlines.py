"""Entry deadlines kept in the database, so no order outlives its entry wait because a broker message was lost.

An entry's deadline is `Trade.cancel_after`, on the database's clock (`trades.db.db_now`), set by
`services.place_entry_order` in the same update that claims the placement, before the order is sent: a live order
always has one, and every worker compares it with the same clock, whatever its own says. Two paths send the
deadline's cancel (`cancel_and_verify`):

- the countdown (`entry_timeout`, a broker message with a countdown): the fast path, on time;
- the sweep (`cancel_overdue_entries`, beat every 15 s): the backstop, for a countdown lost with the broker's data,
  held by a dead worker, or fired while the database was away.

Whoever sends first claims it on the row (`cancel_sent_at`, compare-and-set), so the other does not send it again.
A trade still pending ENTRY_CANCEL_RESEND_SEC after its claim (a cancel chain lost with the broker's data, or one that
could not finish) is sent again. A trade failed "not found" whose deadline has passed gets one cancel by client order
id (`cancel_sent_at` is cleared when it fails): harmless -2011 if the order truly does not exist, and the
verification corrects the trade if it does.

Services here never import a task: the callers pass `send` (the task that enqueues the cancel chain).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

from trades.db import db_now
from trades.models import Trade

from ..orders import rules
from ..orders.snapshots import PLACING

logger = logging.getLogger(__name__)


def _pending_unsent(now: datetime) -> Q:
    """Pending, and its deadline's cancel not sent within ENTRY_CANCEL_RESEND_SEC."""
    resend_before = now - timedelta(seconds=settings.ENTRY_CANCEL_RESEND_SEC)
    return Q(status=Trade.Status.PENDING) & (Q(cancel_sent_at__isnull=True) | Q(cancel_sent_at__lte=resend_before))


def _not_found_unsent() -> Q:
    """Failed "not found", and no cancel sent since (the failure clears cancel_sent_at)."""
    return Q(status=Trade.Status.FAILED, status_reason=rules.NOT_FOUND_REASON, cancel_sent_at__isnull=True)


def _claim(trade_id: int, now: datetime, *, due: bool) -> bool:
    """Compare-and-set: this caller, and no other, sends the deadline's cancel now."""
    query = Trade.objects.filter(_pending_unsent(now) | _not_found_unsent(), pk=trade_id)
    if due:
        query = query.filter(cancel_after__lte=now)
    return query.update(cancel_sent_at=now) == 1


def _send(trade_id: int, now: datetime, send: Callable[[int], object]) -> None:
    try:
        send(trade_id)
    except Exception:
        # The broker refused: give the claim back, so the next sweep sends it.
        Trade.objects.filter(pk=trade_id, cancel_sent_at=now).update(cancel_sent_at=None)
        raise


def cancel_overdue_entries(*, send: Callable[[int], object], limit: int | None = None) -> dict:
    """The sweep: every trade past its deadline whose cancel may be sent (see the module) goes to `send` once,
    oldest deadline first, at most `limit` (ENTRY_SWEEP_BATCH) per run; the next run takes the rest.

    Queries: one clock read and two bounded selects whatever the number of trades, plus one claim per trade sent."""
    limit = settings.ENTRY_SWEEP_BATCH if limit is None else limit
    now = db_now()
    # A placement still in flight (claimed moments ago, its answer not back yet) is left to its countdown, which is
    # scheduled once the answer is in: a cancel sent before the order reaches Binance is a -2011 that cancels nothing,
    # and would hold the claim for ENTRY_CANCEL_RESEND_SEC. Past that window PLACING means an unknown outcome: swept.
    in_flight = Q(exchange_status=PLACING, placed_at__gt=now - timedelta(seconds=2 * settings.BINANCE_HTTP_TIMEOUT + 5))
    overdue = Trade.objects.filter(cancel_after__lte=now).exclude(in_flight).order_by("cancel_after", "pk")
    # Pending first: those can still fill. Then the "not found" ones, the backstop for a wrong inference.
    ids = list(overdue.filter(_pending_unsent(now)).values_list("pk", flat=True)[:limit])
    if len(ids) < limit:
        ids += list(overdue.filter(_not_found_unsent()).values_list("pk", flat=True)[: limit - len(ids)])
    sent = []
    for trade_id in ids:
        if _claim(trade_id, now, due=True):  # lost it to the countdown or another sweep: theirs to send
            _send(trade_id, now, send)
            sent.append(trade_id)
    if sent:
        logger.warning("deadline sweep: cancel sent for %d trade(s) past their deadline: %s", len(sent), sent)
    return {"due": len(ids), "sent": len(sent), "more": len(ids) == limit}


def cancel_entry_at_deadline(trade_id: int, *, send: Callable[[int], object], due_at: float | None = None) -> dict:
    """The countdown fired: send the deadline's cancel unless the sweep (or an earlier countdown) already did, or the
    trade is no longer pending (nor failed "not found"). A countdown that fires before the deadline stored on the
    trade (the scheduling worker's clock runs ahead of the database's) answers `due_in`: the caller waits again.
    Without a stored deadline (a trade from before deadlines were stored), `due_at` (epoch seconds, the hop's own
    target) decides, on this worker's clock."""
    now = db_now()
    trade = Trade.objects.filter(pk=trade_id).only("status", "status_reason", "cancel_after").first()
    if trade is None or not (trade.status == Trade.Status.PENDING or rules.is_failed_not_found(trade)):
        return {"trade_id": trade_id, "outcome": "not_pending"}
    if trade.cancel_after is not None:
        due_in = (trade.cancel_after - now).total_seconds()
    else:
        due_in = 0 if due_at is None else due_at - time.time()
    if due_in > 1:
        return {"trade_id": trade_id, "outcome": "not_due", "due_in": due_in}
    if not _claim(trade_id, now, due=False):
        return {"trade_id": trade_id, "outcome": "already_sent"}
    _send(trade_id, now, send)
    return {"trade_id": trade_id, "outcome": "sent"}
