"""Stream tuning. Each setting below is read from tradeops/settings.py (its default is defined there, and
docs/CONFIGURATION.md describes it):

USER_STREAM_KEEPALIVE_SEC          PUT listenKey this often (Binance expires a key after 60 min); a failed PUT is
                                   retried with the backoff below (or the 429/418's Retry-After) on the live socket
USER_STREAM_MAX_CONNECTION_SEC     reconnect on our terms before Binance's 24 h cut
USER_STREAM_ACCOUNT_REFRESH_SEC    re-read accounts (added / disabled / re-keyed) this often
USER_STREAM_BACKOFF_BASE_SEC       first reconnect delay after an unplanned disconnect (× 0.5–1 jitter); the same
                                   backoff paces retries of a failed keepalive and of a refused enqueue (the connect
                                   reconcile, a position sync)
USER_STREAM_BACKOFF_MAX_SEC        reconnect (and retry) delay cap
USER_STREAM_POSITION_DEBOUNCE_SEC  ACCOUNT_UPDATE bursts and (re)connects → one sync_positions per account per window
USER_STREAM_TAKEOVER_SEC           a killed process's accounts are claimed by the others within this (leases last a
                                   third of it, renewed every tenth; shards.py)
USER_STREAM_CONNECTS_PER_SEC       new connections a process opens per second at most (start, takeover, rebalance);
                                   0: no ramp
USER_STREAM_EVENTS                 the event types named in the socket's `&events=` (comma- or "/"-separated; the
                                   default is events.DEFAULT_EVENTS). Binance's /private/ws delivers only those, and
                                   nothing at all without the parameter ("Important WebSocket Change Notice",
                                   2026-04-23). The three the stream acts on are always included.

The other fields are not settings (rarely worth changing; tests and the benchmark shorten some), among them:
db_call_timeout_sec (a call to the stream's thread pool still running after this is given up; for applying a
message that ends the connection: db_timeout) and
listen_key_validity_sec / listen_key_margin_sec (keepalives failing for validity − margin end the connection).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from .events import parse_events


def _setting(name: str) -> Any:
    """A field's default: the setting's value when the config is made (tradeops/settings.py defines each)."""
    return field(default_factory=lambda: float(getattr(settings, name)))


@dataclass(frozen=True)
class StreamConfig:
    keepalive_sec: float = _setting("USER_STREAM_KEEPALIVE_SEC")
    max_connection_sec: float = _setting("USER_STREAM_MAX_CONNECTION_SEC")
    account_refresh_sec: float = _setting("USER_STREAM_ACCOUNT_REFRESH_SEC")
    backoff_base_sec: float = _setting("USER_STREAM_BACKOFF_BASE_SEC")
    backoff_max_sec: float = _setting("USER_STREAM_BACKOFF_MAX_SEC")
    position_debounce_sec: float = _setting("USER_STREAM_POSITION_DEBOUNCE_SEC")
    takeover_sec: float = _setting("USER_STREAM_TAKEOVER_SEC")
    connects_per_sec: float = _setting("USER_STREAM_CONNECTS_PER_SEC")
    # Not settings: rarely worth changing, but tests and the benchmark shorten some.
    stable_after_sec: float = 30.0  # a connection that lived this long resets the failure count
    open_timeout_sec: float = 10.0
    ping_interval_sec: float = 20.0  # our pings; a half-open socket is noticed within ping_interval + ping_timeout
    ping_timeout_sec: float = 20.0
    db_tries: int = 3
    db_retry_delay_sec: float = 0.05
    # A DB call from the stream that has not returned by then (a half-open socket after a failover) ends the
    # connection: the reconnect's reconcile fetches what was not applied. The thread itself cannot be cancelled.
    db_call_timeout_sec: float = 60.0
    last_event_write_sec: float = 5.0  # AccountSyncState.stream_last_event_at is written at most this often
    shutdown_sec: float = 4.0  # SIGTERM → sockets closed within this (the process exits within 5 s)
    listen_key_http_timeout_sec: float = 3.0
    # Binance expires a listenKey this long after its creation or last successful keepalive. Failed keepalives are
    # retried on the live socket; once none has succeeded for validity − margin, the connection starts over.
    listen_key_validity_sec: float = 60 * 60
    listen_key_margin_sec: float = 5 * 60
    threads: int = 8
    events: tuple[str, ...] = field(default_factory=lambda: parse_events(settings.USER_STREAM_EVENTS))

    @classmethod
    def from_settings(cls, **overrides: Any) -> StreamConfig:
        """The settings' values (the fields' defaults), with `overrides`."""
        return cls(**overrides)

    @property
    def lease_sec(self) -> float:
        """How long a stream lease (and a process's heartbeat) lasts after each pass, on the database's clock."""
        return self.takeover_sec / 3

    @property
    def renew_sec(self) -> float:
        """How often a process renews its leases and claims or releases accounts."""
        return self.takeover_sec / 10

    @property
    def stale_sec(self) -> float:
        """A free account nobody under their share claimed for this long may be taken by a process at its share."""
        return 2 * self.renew_sec

    def backoff_delay(self, failures: int) -> float:
        """Seconds to wait before attempt number `failures` + 1: exponential, capped, with jitter (so a fleet of
        accounts cut off together does not reconnect in lockstep)."""
        if failures <= 0:
            return 0.0
        ceiling = min(self.backoff_max_sec, self.backoff_base_sec * 2 ** min(failures - 1, 30))
        return random.uniform(0.5, 1.0) * ceiling
