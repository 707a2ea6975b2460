"""The user-data WebSocket consumer ("reconcile on every (re)connect", docs/DESIGN.md).

One asyncio process streams every active account (or the named ones) whose stream lease it holds — any number of
processes share the accounts and take over a dead one's (stream/shards.py) — one connection each, to
``{BINANCE_FUTURES_WS_URL}/private/ws?listenKey=<key>&events=<USER_STREAM_EVENTS, "/"-separated>`` (without
``events`` Binance delivers nothing):

- listenKey: created per connection (Binance returns the live key if there is one), kept alive every
  USER_STREAM_KEEPALIVE_SEC, never DELETEd (one key per account, shared with the bot's own stream: a DELETE would
  close that too; on shutdown the socket is closed and the key lapses); -1125 on keepalive or a ``listenKeyExpired`` event → a
  new key and an immediate reconnect; a proactive reconnect after USER_STREAM_MAX_CONNECTION_SEC, before Binance's
  24 h cut. A keepalive that fails otherwise (429/418, 5xx, timeout) is retried with backoff (at least the rate
  limit's Retry-After) on the live connection, which ends (then backs off and reconnects) only once no keepalive
  has succeeded for 55 minutes, shortly before Binance would expire the key.
- After every successful subscribe, the first included, ``reconcile_account(account_id, reason="ws_connect")`` is
  enqueued: fills during a gap (drop, expired key, restart) are fetched from Binance; overlap is harmless. A
  ``sync_positions(account_id, reason="ws_connect")`` follows through the position-sync debounce below (a position
  closed in the gap, by a stop-loss say, is noticed now). A refused enqueue is retried with backoff.
- Unplanned disconnects back off exponentially with jitter (USER_STREAM_BACKOFF_BASE_SEC … _MAX_SEC); each account
  runs on its own, one account's trouble never touches another's stream.
- ORDER_TRADE_UPDATE → ``services.apply_order_snapshot(trade, …, source="ws")`` in a worker thread (never on the
  loop); a DB failure is retried 3 times, then the account gets a reconcile instead of losing the fill; a DB call
  that has not returned within 60 s (a hung socket) ends the connection, and the reconnect's reconcile fetches the
  order. Orders the bot did not create are logged and left alone. ACCOUNT_UPDATE with positions → one
  ``sync_positions`` per account per USER_STREAM_POSITION_DEBOUNCE_SEC. Anything malformed or unknown → one WARNING
  with a masked excerpt.
- Accounts are re-read every USER_STREAM_ACCOUNT_REFRESH_SEC: added → started, disabled/deleted → stopped (key
  closed), re-keyed → restarted. An account whose api_secret cannot be decrypted is skipped (one ERROR per refresh,
  naming it); the others stream.
- A stream a reconcile marked deaf (connected, but REST keeps finding order changes it never delivered:
  ``reconciliation.stream.guard``) is noticed at the next account refresh and reconnected at once
  (reason ``deaf``), once per mark; the reconnect's reconcile clears the mark unless it finds misses too.
- State for the admin and health checks: AccountSyncState.stream_state (connecting / connected / reconnecting /
  stopped), stream_state_at, stream_last_event_at (written at most every 5 s).
- Log lines: ``user_stream event=connected|reconnected|disconnected|connect_failed account=<id>/<name> reason=…
  gap_ms=… connected_for_s=… retry_in_s=…``.

`handle_message(account_id, raw)` is the message path without a socket (tests, fuzzing); it never raises.
"""

from .stream.config import StreamConfig
from .stream.connection import AccountStream
from .stream.messages import Outcome, classify, excerpt, handle_message
from .stream.runner import UserStreamRunner, run_user_stream

__all__ = [
    "AccountStream",
    "Outcome",
    "StreamConfig",
    "UserStreamRunner",
    "classify",
    "excerpt",
    "handle_message",
    "run_user_stream",
]
