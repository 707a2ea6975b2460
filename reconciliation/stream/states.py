"""The user stream's states, as `AccountSyncState.stream_state` stores them (stream/state.py writes them; health,
metrics, the audit cadence and the missed-event guard read them). The string values are stored and must not change."""

from __future__ import annotations

from enum import StrEnum


class StreamState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


# (Re)connecting for less than HEALTH_STREAM_GRACE_SEC is not "down" yet.
ON_ITS_WAY = frozenset({StreamState.CONNECTING, StreamState.RECONNECTING})
