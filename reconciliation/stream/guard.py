"""Is an account's user stream deaf? A socket can be connected and silent: Binance accepts a stream URL it will never
deliver anything on (since 2026-04-23, `/private/ws` without `&events=`), and the next silent change will look the
same. Health says "connected" while every fill reaches the database only through the minute-by-minute REST reconcile.

The evidence, gathered at no extra Binance call: a REST look-up (a reconcile, a cancel verification, an operator's
"Verify on Binance") whose order snapshot changes a trade's state (opens it, cancels it, records a partial fill,
corrects it) is a change the socket should have delivered first, if

- the account's socket was connected when the change happened: `AccountSyncState.stream_state` is "connected" and
  its `stream_state_at` (when that connection was made) lies before the change's Binance `updateTime` (plus a small
  margin for the clocks of Binance and of our hosts);
- the stream process was still alive after it: its heartbeat (`stream_heartbeat_at`) is later than the change (a
  killed process leaves "connected" behind);
- the change is older than USER_STREAM_DEAF_LAG_SEC: a younger one may still be on its way through the socket or
  waiting for the database.

Each such change is a miss: one `StreamMiss` row (counted in /metrics as
`tradeops_user_stream_missed_events_total{account}`) and one WARNING. USER_STREAM_DEAF_AFTER misses within an hour
mark the stream deaf (`stream_deaf_since`): /health/'s user_stream check fails for the account, the admin shows it,
and the stream process reconnects that account with a fresh connection. The reconcile that the reconnect triggers
clears the mark when it finds no miss; another miss within the hour marks it again at once.

What this cannot see, on purpose (it never guesses): changes REST applied within the lag, changes made while the
stream was reconnecting, and changes the socket delivered late but within the lag. A deaf stream is still noticed:
every REST pass adds the misses it can prove.

Cost: nothing for a reconcile that changes nothing; one read of the account's sync state on its first state change,
and a few writes per miss found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from trades.models import Trade, TradeEvent

from ..models import AccountSyncState, StreamMiss
from ..orders import rules
from .states import StreamState

logger = logging.getLogger("reconciliation.user_stream")

# Paths that look an order up by REST: what they change, a working socket would have delivered first.
REST_LOOKUPS = frozenset({TradeEvent.Source.RECONCILE, TradeEvent.Source.CANCEL_VERIFY, TradeEvent.Source.ADMIN})
STATE_CHANGES = frozenset({rules.OPENED, rules.PROGRESS, rules.CANCELLED, rules.REOPENED})
# Binance's clock and ours differ a little, and stream_state_at is written just after the socket opened: a change
# this close to the connection is not held against it.
CLOCK_MARGIN = timedelta(seconds=2)
DEAF_WINDOW = timedelta(hours=1)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class StreamWindow:
    """What the account's sync state says about its socket: connected since when, and the stream process's last
    heartbeat. Both None unless it is connected."""

    connected_since: datetime | None = None
    heartbeat_at: datetime | None = None

    @classmethod
    def load(cls, account_id: int) -> StreamWindow:
        row = (
            AccountSyncState.objects.filter(account_id=account_id)
            .values_list("stream_state", "stream_state_at", "stream_heartbeat_at")
            .first()
        )
        if row is None or row[0] != StreamState.CONNECTED:
            return cls()
        return cls(row[1], row[2])

    def missed(self, update_time_ms: int | None, now: datetime, lag: timedelta) -> bool:
        """Whether a change Binance stamped `update_time_ms` should have reached us through this socket by now."""
        if update_time_ms is None or self.connected_since is None or self.heartbeat_at is None:
            return False
        at = _from_ms(update_time_ms)
        return self.connected_since + CLOCK_MARGIN <= at <= min(now - lag, self.heartbeat_at)


class MissDetector:
    """One per REST pass over an account's orders (a reconcile, a verification): reads the sync state once, on the
    first state change, and records each miss it proves."""

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.missed = 0
        self._window: StreamWindow | None = None

    def observe(self, trade: Trade, result: str, source: str) -> bool:
        """After apply_order_snapshot(trade, …, source) returned `result`: was that a change the socket missed?"""
        if source not in REST_LOOKUPS or result not in STATE_CHANGES:
            return False
        if self._window is None:
            self._window = StreamWindow.load(self.account_id)
        now = timezone.now()
        lag = timedelta(seconds=settings.USER_STREAM_DEAF_LAG_SEC)
        if not self._window.missed(trade.exchange_update_time, now, lag):
            return False
        self.missed += 1
        connected_since = self._window.connected_since
        assert connected_since is not None, "missed() is False unless the socket was connected"
        record_miss(trade, source=source, connected_since=connected_since, now=now)
        return True


def record_miss(trade: Trade, *, source: str, connected_since: datetime, now: datetime | None = None) -> None:
    """Keep the miss, say so once, and mark the stream deaf once USER_STREAM_DEAF_AFTER misses fell within an hour."""
    now = now or timezone.now()
    update_time = trade.exchange_update_time
    assert update_time is not None, "a miss is a change Binance stamped (StreamWindow.missed)"
    StreamMiss.objects.create(
        account_id=trade.account_id,
        trade=trade,
        detected_at=now,
        source=source,
        exchange_status=trade.exchange_status,
        exchange_update_time=update_time,
        connected_since=connected_since,
    )
    age = (now - _from_ms(update_time)).total_seconds()
    logger.warning(
        "user_stream missed_event account=%s trade=%s client_order_id=%s exchange_status=%s age_s=%.1f "
        "connected_since=%s found_by=%s: the socket was connected and never delivered this order change",
        trade.account_id,
        trade.pk,
        trade.client_order_id,
        trade.exchange_status,
        age,
        connected_since.isoformat(),
        source,
    )
    recent = StreamMiss.objects.filter(account_id=trade.account_id, detected_at__gt=now - DEAF_WINDOW).count()
    if recent < settings.USER_STREAM_DEAF_AFTER:
        return
    if AccountSyncState.objects.filter(account_id=trade.account_id, stream_deaf_since__isnull=True).update(
        stream_deaf_since=now
    ):
        logger.error(
            "user_stream deaf account=%s misses_last_hour=%d: the connected socket is not delivering order "
            "events; the stream reconnects it (fills are still found by the REST reconcile)",
            trade.account_id,
            recent,
        )


def clear_deaf_after_reconnect(account_id: int, *, reconcile_started_at: datetime) -> bool:
    """The reconcile a (re)connect asked for, started after the stream was marked deaf, found no miss: clear the
    mark. (Its connection was made after the mark: the stream process reconnects a deaf stream, and a reconcile
    asked for by an older connection that runs this late is followed by the reconnect's own.)"""
    cleared = AccountSyncState.objects.filter(
        account_id=account_id,
        stream_deaf_since__lt=reconcile_started_at,
    ).update(stream_deaf_since=None)
    if cleared:
        logger.info(
            "user_stream deaf_cleared account=%s: reconnected, and its reconcile found no missed event", account_id
        )
    return bool(cleared)
