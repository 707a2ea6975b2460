"""How often the scheduled (beat) reconcile audits an account by REST.

An account whose user stream is healthy gets its order changes pushed: fills reach the database through the socket
within a second, and the REST reconcile is only the guard against what a socket can lose. Such an account is
audited every RECONCILE_AUDIT_SEC instead of every beat (a minute). Every other account keeps the
minute. The beat's reconcile of an account is left out only when all of these hold:

- its stream is healthy, as /health/ judges it: `stream_state` "connected", not marked deaf (`stream_deaf_since`,
  stream/guard.py), and the stream process's heartbeat fresh (a killed process leaves "connected" behind);
- its latest "ok" pending reconcile (ReconcileRun; any reason: beat, ws_connect, cancel, operator; a partial run,
  or one with failed look-ups, is no audit, and does not undo the last one that was) started after that socket
  connected (what happened before the connection was covered by REST), and will still be younger than RECONCILE_AUDIT_SEC at the next beat
  (`audit_lead_sec`: a minute): the audit is sent at the last beat before its age would pass RECONCILE_AUDIT_SEC,
  not the first one after, so audits of a healthy stream are 540–600 s apart plus the wait in the queue, never
  600–660 s plus the wait;
- it has no pending trade whose placement is unconfirmed (exchange_status "" or PLACING): if such an order was never
  created, no event will ever come, and only a look-up fails it after PENDING_NOT_FOUND_GRACE_SEC;
- it has no not-found re-check due (orders/rechecks.py): those are REST look-ups by nature.

Reconciles asked for a reason (a stream's (re)connect, a cancel, an operator) and the hourly deep pass are never
left out by the beat's rules (only `reconcile_all_accounts`' beat fan-out asks `audit_not_due`); a (re)connect's own
reconcile is dropped only when another one, started after that connection, ended ok (`reconciled_since_connect`). The periodic position sync follows the same
cadence (`positions_not_due`): a healthy stream syncs positions at each ACCOUNT_UPDATE and (re)connect, so the
5-minute schedule leaves it out while its last "ok" position sync, after the socket connected, is younger than
RECONCILE_AUDIT_SEC; every other account keeps the 5 minutes. RECONCILE_AUDIT_SEC = 0 audits every account
every beat. Cost: three queries per beat for the whole fleet, none per account. `reconciled_since_connect` tells
whether a stream's connection has had its reconcile (a (re)connect's own reconcile and position sync: tasks.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone

from trades.models import Trade

from ..models import AccountSyncState, ReconcileRun
from ..orders.snapshots import PLACING
from ..stream.states import StreamState

logger = logging.getLogger(__name__)

STREAM_HEALTHY = "stream healthy, audited recently"
BEAT_SEC = 60  # reconcile_all_accounts' schedule (migration 0002_periodic_tasks)


def audit_lead_sec(audit_sec: float) -> float:
    """How long before its age passes `audit_sec` an audit is sent: one beat, at most a tenth of the interval (a
    compressed schedule, as the end-to-end tests run, keeps the same proportion)."""
    return min(BEAT_SEC, audit_sec / 10)


def stream_heartbeat_max_age() -> timedelta:
    """How old the stream process's heartbeat may be while its state is trusted (the same as /health/'s)."""
    return timedelta(seconds=3 * settings.USER_STREAM_ACCOUNT_REFRESH_SEC + 10)


def audit_not_due(account_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, str]:
    """The accounts among `account_ids` the beat may leave out this time, each with the reason. Empty when
    RECONCILE_AUDIT_SEC is 0."""
    audit_sec = settings.RECONCILE_AUDIT_SEC
    if not audit_sec or audit_sec <= 0:
        return {}
    now = now or timezone.now()
    # The latest "ok" pending reconcile, not the latest run: a later run the budget refused (partial) or whose
    # look-ups failed verified nothing, and takes nothing away from the one that did.
    audited = ReconcileRun.objects.filter(
        account_id=OuterRef("account_id"),
        kind=ReconcileRun.Kind.PENDING,
        outcome=ReconcileRun.Outcome.OK,
        started_at__gt=now - timedelta(seconds=audit_sec - audit_lead_sec(audit_sec)),
        started_at__gte=OuterRef("stream_state_at"),
    )
    healthy = set(
        AccountSyncState.objects.filter(account_id__in=list(account_ids), **_stream_healthy(now))
        .filter(Exists(audited))
        .values_list("account_id", flat=True)
    )
    if not healthy:
        return {}
    unconfirmed = Trade.objects.filter(
        account_id__in=healthy, status=Trade.Status.PENDING, exchange_status__in=["", PLACING]
    )
    rechecks = Trade.objects.filter(account_id__in=healthy, not_found_recheck_at__lte=now, status=Trade.Status.FAILED)
    healthy -= set(unconfirmed.values_list("account_id", flat=True).distinct())
    healthy -= set(rechecks.values_list("account_id", flat=True).distinct())
    return {account_id: STREAM_HEALTHY for account_id in healthy}


def _stream_healthy(now: datetime) -> dict[str, Any]:
    """AccountSyncState filters: the account's stream is healthy as /health/ judges it."""
    return {
        "stream_state": StreamState.CONNECTED.value,
        "stream_deaf_since__isnull": True,
        "stream_heartbeat_at__gt": now - stream_heartbeat_max_age(),
        "stream_state_at__isnull": False,
    }


def positions_not_due(account_ids: Iterable[int], *, now: datetime | None = None) -> set[int]:
    """The accounts among `account_ids` the periodic position sync may leave out this time: the stream is healthy
    (position changes arrive as ACCOUNT_UPDATE, each followed by a position sync, as does every (re)connect) and a
    position sync ended "ok" after that socket connected, less than RECONCILE_AUDIT_SEC ago. Empty when
    RECONCILE_AUDIT_SEC is 0. Cost: one query for the fleet."""
    audit_sec = settings.RECONCILE_AUDIT_SEC
    if not audit_sec or audit_sec <= 0:
        return set()
    now = now or timezone.now()
    synced = ReconcileRun.objects.filter(
        account_id=OuterRef("account_id"),
        kind=ReconcileRun.Kind.POSITIONS,
        outcome=ReconcileRun.Outcome.OK,
        started_at__gt=now - timedelta(seconds=audit_sec),
        started_at__gte=OuterRef("stream_state_at"),
    )
    return set(
        AccountSyncState.objects.filter(account_id__in=list(account_ids), **_stream_healthy(now))
        .filter(Exists(synced))
        .values_list("account_id", flat=True)
    )


CLOCK_MARGIN = timedelta(seconds=2)  # the stream process's and the worker's clocks (two hosts) may differ this much


def reconciled_since_connect(account_id: int, *, margin: timedelta = CLOCK_MARGIN) -> bool:
    """The account's stream is connected, not marked deaf, and a pending reconcile that ended "ok" started after it connected (with
    CLOCK_MARGIN): it read everything that happened before that connection, so the connection's own reconcile,
    still waiting (retried after the budget refused it), has nothing left to find. A negative `margin` asks only
    whether the connection's own reconcile (which starts within moments of the connect) has run: what a position
    sync waits for, an ordering of the budget, not a safety condition."""
    changed = (
        # a deaf mark is cleared only by its connection's own reconcile (reconcile/pending.py): never left out then
        AccountSyncState.objects.filter(
            account_id=account_id, stream_state=StreamState.CONNECTED.value, stream_deaf_since__isnull=True
        )
        .values_list("stream_state_at", flat=True)
        .first()
    )
    if changed is None:  # not connected (or its connect not recorded yet): nothing to compare with
        return False
    return ReconcileRun.objects.filter(
        account_id=account_id,
        kind=ReconcileRun.Kind.PENDING,
        outcome=ReconcileRun.Outcome.OK,
        started_at__gte=changed + margin,
    ).exists()


__all__ = [
    "audit_not_due",
    "positions_not_due",
    "stream_heartbeat_max_age",
    "STREAM_HEALTHY",
    "BEAT_SEC",
    "audit_lead_sec",
]
