"""One account's user-data stream: listenKey life cycle, the WebSocket, reconnects, and what each message triggers.

    create listenKey → connect {ws}/private/ws?listenKey=…&events=… → enqueue reconcile("ws_connect") and schedule a
    (debounced) sync_positions("ws_connect") → read …
      … until: the socket drops / listenKeyExpired / the key is gone on keepalive (-1125) / keepalives have
               failed (each retried with backoff on the live socket) until the key is about to lapse
               / the connection reaches max age / stop()
               / applying a message does not return within db_call_timeout_sec (a DB call hung on a dead socket)
    → back off (none for planned reconnects) → again, with a new key when the old one is gone.

The listenKey is never DELETEd: Binance keeps one key per account, shared by every consumer of the API key (the
bot's own stream too), and a DELETE closes all of their sockets (docs/DESIGN.md "What Binance really does" F18; USDⓈ-M "User Data Streams":
"Doing a DELETE on a listenKey will close the stream and invalidate the listenKey"). On shutdown we close our
socket and let the key lapse (60 minutes after its last keepalive, or kept alive by the other consumers).

The reconcile is enqueued only once the socket is live, so a fill either arrives on this socket or happened
before it was open and the reconcile finds it; overlap is harmless (the rule is idempotent). Positions may have
changed in the gap as well (a stop-loss, its ACCOUNT_UPDATE lost), hence the position sync. Enqueues the broker
refuses (that reconcile, any position sync) are retried with the reconnect backoff until they go through, the
stream stops, or — for the reconcile — a newer connection has sent its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any, TypedDict, TypeVar

from django.conf import settings
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from trades.binance_client import BinanceFuturesClient
from trades.exceptions import ListenKeyExpired, RateLimited
from trades.models import Account

from . import messages
from .config import StreamConfig
from .state import blocking, record_last_event, record_state
from .states import StreamState

logger = logging.getLogger("reconciliation.user_stream")

# Reasons a connection ends that call for an immediate reconnect rather than a backoff.
PLANNED = frozenset({"listen_key_expired", "max_connection_age", "deaf"})
# Applying a message took longer than config.db_call_timeout_sec: a connection end reason and a message outcome.
DB_TIMEOUT = "db_timeout"
DISCONNECTS_KEPT = 100  # AccountStream.disconnects: a stream runs for months

T = TypeVar("T")


class _Bind(TypedDict, total=False):
    """websockets.connect's pass-through to loop.create_connection: the local address the socket leaves from."""

    local_addr: tuple[str, int]


def ws_base_url(account: Account) -> str:
    name = "BINANCE_FUTURES_TESTNET_WS_URL" if account.use_testnet else "BINANCE_FUTURES_WS_URL"
    return getattr(settings, name).rstrip("/")


def stream_url(base_url: str, listen_key: str, events: Iterable[str]) -> str:
    """Binance's private route since 2026-04-23: the listenKey and the `/`-separated event types to deliver —
    without `events` the socket is accepted and stays silent ("Important WebSocket Change Notice")."""
    return f"{base_url}/private/ws?listenKey={listen_key}&events={'/'.join(events)}"


def listen_key_client(account: Account, timeout: float) -> BinanceFuturesClient:
    """The account's gateway for listenKey calls, with a short timeout (a slow keepalive must not hold the stream).
    The caller closes it."""
    with BinanceFuturesClient.for_account(account) as defaults:  # only for its URL, timeout and label
        return BinanceFuturesClient(
            account.api_key,
            account.api_secret,
            rest_url=defaults.rest_url,
            timeout=min(defaults.timeout, timeout),
            account_label=defaults.account_label,
            source_address=defaults.source_address,
        )


class AccountStream:
    """Runs until stop(); never raises out of run(). Counters (`connects`, `outcomes`) are for tests and the bench."""

    def __init__(
        self,
        account: Account,
        *,
        config: StreamConfig,
        executor: Executor,
        enqueue_reconcile: Callable[[int, str], object],
        enqueue_position_sync: Callable[[int, str], object],
    ) -> None:
        self.account = account
        self.account_id = account.pk
        self.label = f"{account.pk}/{account.name}"
        self.config = config
        self.executor = executor
        self.enqueue_reconcile = enqueue_reconcile
        self.enqueue_position_sync = enqueue_position_sync
        self.connects = 0
        self.disconnects: deque[str] = deque(maxlen=DISCONNECTS_KEPT)  # why the latest connections ended, in order
        self.outcomes: dict[str, int] = {}
        self._stopping = False
        self._ws: ClientConnection | None = None
        self._end_reason: str | None = None
        self._listen_key: str | None = None
        self._connected_at: float | None = None
        self._connected_wall: datetime | None = None  # the same instant, as a datetime (compared with the deaf mark's)
        self._tasks: set[asyncio.Task] = set()
        self._position_sync: asyncio.Task | None = None
        self._last_event_written = 0.0

    # --- control -------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to close the socket and the listenKey and return (call on the stream's loop)."""
        self._stopping = True
        self._end("stop")

    def reconnect_if_deaf(self, marked_at: datetime) -> bool:
        """A reconcile marked this account's stream deaf (stream/guard.py) at `marked_at`: if the live connection
        is older than the mark, end it; the loop reconnects at once, and that connection's reconcile clears the
        mark unless it is deaf too. A connection made after the mark is left alone (one reconnect per mark)."""
        if self._ws is None or self._connected_wall is None or marked_at <= self._connected_wall:
            return False
        logger.warning(
            "user_stream event=deaf account=%s marked_at=%s connected_at=%s: the socket is connected but "
            "missing order events; reconnecting",
            self.label,
            marked_at.isoformat(),
            self._connected_wall.isoformat(),
        )
        self._end("deaf")
        return True

    def _end(self, reason: str) -> None:
        """End the current connection (first reason wins); run() decides what comes next."""
        if self._end_reason is None:
            self._end_reason = reason
        if self._ws is not None:
            self._spawn(self._ws.close())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn run in the thread pool, waited for at most db_call_timeout_sec (TimeoutError then): a call stuck on a
        dead socket must not hang this account. (The thread itself cannot be stopped; it finishes on its own.)"""
        return await asyncio.wait_for(blocking(self.executor, fn, *args, **kwargs), self.config.db_call_timeout_sec)

    async def _call(self, what: str, fn: Callable[..., object], *args: Any) -> None:
        """A side effect (enqueue a task, write state) that must not take the stream down when it fails, nor hang
        it (a DB call stuck on a dead socket) for longer than db_call_timeout_sec."""
        try:
            await self._blocking(fn, *args)
        except Exception as exc:  # noqa: BLE001 — TimeoutError included
            logger.error(
                "user_stream %s_failed account=%s: %s: %s",
                what,
                self.label,
                type(exc).__name__,
                str(exc)[:200] or f"no answer within {self.config.db_call_timeout_sec:g}s",
            )

    # --- the loop ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        client: BinanceFuturesClient | None = None
        failures, reason, disconnected_at = 0, "start", None
        try:
            await self._call("state", record_state, self.account_id, StreamState.CONNECTING)
            client = await self._blocking(listen_key_client, self.account, self.config.listen_key_http_timeout_sec)
            while not self._stopping:
                self._end_reason, self._connected_at = None, None
                try:
                    reason = await self._connect_and_read(client, reason, disconnected_at)
                except Exception as exc:  # noqa: BLE001 — refused, timed out, DNS, REST errors: back off, retry
                    reason = self._end_reason or _describe(exc)
                connected_at = self._connected_at
                if self._stopping:
                    break
                self.disconnects.append(reason)
                disconnected_at = time.monotonic()
                lived = disconnected_at - connected_at if connected_at else 0.0
                failures = 0 if lived >= self.config.stable_after_sec else failures + 1
                planned = reason in PLANNED and failures <= 1
                delay = 0.0 if planned else self.config.backoff_delay(max(failures, 1))
                log = logger.info if planned else logger.warning
                log(
                    "user_stream event=%s account=%s reason=%s connected_for_s=%.1f failures=%d retry_in_s=%.2f",
                    "disconnected" if connected_at else "connect_failed",
                    self.label,
                    reason,
                    lived,
                    failures,
                    delay,
                )
                await self._call("state", record_state, self.account_id, StreamState.RECONNECTING)
                await self._sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 — one account's bug never takes the others down; the runner restarts us
            logger.exception("user_stream crashed account=%s", self.label)
        finally:
            await self._shut(client)

    async def _connect_and_read(
        self, client: BinanceFuturesClient, previous_reason: str, disconnected_at: float | None
    ) -> str:
        """One connection: returns why it ended. Raises when it could not connect (or broke while connected)."""
        key_extended_at = time.monotonic()  # before the POST: Binance's 60 minutes start no earlier
        self._listen_key = await self._blocking(client.create_listen_key)
        if self._stopping:
            return "stop"
        url = stream_url(ws_base_url(self.account), self._listen_key, self.config.events)
        cfg = self.config
        # The socket leaves from the account's egress address, like its REST calls (BINANCE_SOURCE_ADDRESSES).
        bind: _Bind = {"local_addr": (client.source_address, 0)} if client.source_address else {}
        async with connect(
            url,
            open_timeout=cfg.open_timeout_sec,
            ping_interval=cfg.ping_interval_sec,
            ping_timeout=cfg.ping_timeout_sec,
            close_timeout=1,
            max_size=2**20,
            **bind,
        ) as ws:
            self._ws = ws
            self._connected_at = time.monotonic()
            self._connected_wall = timezone.now()
            self.connects += 1
            gap_ms = round((self._connected_at - disconnected_at) * 1000) if disconnected_at else None
            logger.info(
                "user_stream event=%s account=%s reason=%s gap_ms=%s",
                "connected" if self.connects == 1 else "reconnected",
                self.label,
                previous_reason,
                gap_ms,
            )
            if self._stopping:  # stop() came while connecting
                return "stop"
            # Live now: whatever filled before this instant the reconcile finds; anything later arrives here.
            connection = self.connects
            self._spawn(
                self._enqueue(
                    "enqueue_reconcile",
                    self.enqueue_reconcile,
                    "ws_connect",
                    superseded=lambda: self.connects != connection,
                )
            )  # a newer one sends its own
            # Positions may have changed in the gap too (a stop-loss closed one, its ACCOUNT_UPDATE lost).
            self._schedule_position_sync("ws_connect")
            self._spawn(self._call("state", record_state, self.account_id, StreamState.CONNECTED))
            keepalive = self._spawn(self._keep_alive(client, self._listen_key, key_extended_at))
            max_age = asyncio.get_running_loop().call_later(cfg.max_connection_sec, self._end, "max_connection_age")
            try:
                reason = await self._read(ws)
            finally:
                self._ws = None
                keepalive.cancel()
                max_age.cancel()
            return reason

    async def _read(self, ws: ClientConnection) -> str:
        try:
            async for raw in ws:
                await self._on_message(raw)
                if self._end_reason == DB_TIMEOUT:
                    break  # each further message would wait as long; the reconnect's reconcile fetches them
        except ConnectionClosed as exc:
            return self._end_reason or _describe(exc)
        return self._end_reason or _describe_close(ws)

    async def _on_message(self, raw: str | bytes) -> None:
        outcome = messages.classify(self.account_id, raw)
        if outcome.kind == messages.ORDER:
            snap = outcome.snapshot
            assert snap is not None, "classify() gives every ORDER outcome its snapshot"
            try:
                outcome = await self._blocking(
                    messages.apply_order_event,
                    self.account_id,
                    snap,
                    enqueue_reconcile=self.enqueue_reconcile,
                    tries=self.config.db_tries,
                    retry_delay=self.config.db_retry_delay_sec,
                )
            except TimeoutError:
                # Waiting on would freeze this account: no reads, so no notice that its socket died, no reconnect,
                # no reconcile, and "connected" in the health check. The thread may still finish: harmless, the rule
                # is idempotent.
                logger.error(
                    "user_stream db_timeout account=%s order_id=%s client_order_id=%s status=%s: not applied "
                    "within %gs; reconnecting (its reconcile fetches the order from Binance)",
                    self.label,
                    snap.order_id,
                    messages.printable(snap.client_order_id),
                    snap.status,
                    self.config.db_call_timeout_sec,
                )
                self._end(DB_TIMEOUT)
                outcome = messages.Outcome(DB_TIMEOUT)
        elif outcome.kind == messages.POSITIONS:
            self._schedule_position_sync("ws_account_update")
        elif outcome.kind == messages.EXPIRED:
            self._end("listen_key_expired")
        self.outcomes[outcome.kind] = self.outcomes.get(outcome.kind, 0) + 1
        now = time.monotonic()
        if now - self._last_event_written >= self.config.last_event_write_sec:
            self._last_event_written = now
            self._spawn(self._call("state", record_last_event, self.account_id, timezone.now()))

    async def _keep_alive(self, client: BinanceFuturesClient, key: str, extended_at: float) -> None:
        """PUT the listenKey every keepalive_sec. A failed PUT (429/418, 5xx, a timeout) keeps the socket and is
        retried with backoff, never sooner than a rate limit's retry_after (re-POSTing or reconnecting then would
        only add to it). The connection ends when the key is gone (-1125), or when no PUT has succeeded for
        listen_key_validity_sec − listen_key_margin_sec (time.monotonic() `extended_at` was the last success)."""
        cfg = self.config
        failures, wait = 0, cfg.keepalive_sec
        while True:
            give_up_at = extended_at + cfg.listen_key_validity_sec - cfg.listen_key_margin_sec
            await asyncio.sleep(max(0.0, min(wait, give_up_at - time.monotonic())))
            if failures and time.monotonic() >= give_up_at:
                logger.error(
                    "user_stream keepalive_gave_up account=%s failures=%d last_success_s_ago=%.0f: the "
                    "listenKey is about to lapse; reconnecting with a new one",
                    self.label,
                    failures,
                    time.monotonic() - extended_at,
                )
                self._end("keepalive_failed")
                return
            attempt_at = time.monotonic()
            try:
                await self._blocking(client.keepalive_listen_key, key)
            except ListenKeyExpired:
                self._end("listen_key_expired")
                return
            except Exception as exc:  # noqa: BLE001 — rate limits, 5xx, timeouts: the key is still good for a while
                failures += 1
                wait = cfg.backoff_delay(failures)
                if isinstance(exc, RateLimited):
                    wait = max(wait, exc.retry_after)
                logger.warning(
                    "user_stream keepalive_failed account=%s attempt=%d retry_in_s=%.2f key_lapses_in_s=%.0f: %s: %s",
                    self.label,
                    failures,
                    wait,
                    extended_at + cfg.listen_key_validity_sec - time.monotonic(),
                    type(exc).__name__,
                    str(exc)[:200],
                )
                continue
            if failures:
                logger.info("user_stream keepalive_recovered account=%s after %d failed attempts", self.label, failures)
            failures, wait, extended_at = 0, cfg.keepalive_sec, attempt_at

    def _schedule_position_sync(self, reason: str) -> None:
        """One sync_positions per account per debounce window, sent at the window's end (retried until it is), with
        the reason of the request that opened the window (a connect, an ACCOUNT_UPDATE).

        Requests that arrive while it is being sent fall into the same window: the worker reads Binance's positions
        only once the send has completed, so after them."""
        if self._position_sync is not None and not self._position_sync.done():
            return

        async def send() -> None:
            await asyncio.sleep(self.config.position_debounce_sec)
            await self._enqueue("enqueue_position_sync", self.enqueue_position_sync, reason)

        self._position_sync = self._spawn(send())

    async def _enqueue(
        self,
        what: str,
        fn: Callable[[int, str], object],
        reason: str,
        *,
        superseded: Callable[[], bool] = lambda: False,
    ) -> None:
        """fn(account_id, reason) — a Celery enqueue — retried with the reconnect backoff until it goes through,
        the stream stops or `superseded()`. A broker hiccup at the wrong moment must not cost the task."""
        failures = 0
        while True:
            try:
                await self._blocking(fn, self.account_id, reason)
            except Exception as exc:  # noqa: BLE001 — the broker away, above all; TimeoutError included
                failures += 1
                delay = self.config.backoff_delay(failures)
                logger.error(
                    "user_stream %s_failed account=%s reason=%s attempt=%d retry_in_s=%.2f: %s: %s",
                    what,
                    self.label,
                    reason,
                    failures,
                    delay,
                    type(exc).__name__,
                    str(exc)[:200] or f"no answer within {self.config.db_call_timeout_sec:g}s",
                )
            else:
                if failures:
                    logger.info(
                        "user_stream %s_sent account=%s reason=%s attempt=%d", what, self.label, reason, failures + 1
                    )
                return
            await self._sleep(delay)
            if self._stopping or superseded():
                logger.warning(
                    "user_stream %s_abandoned account=%s reason=%s: %s",
                    what,
                    self.label,
                    reason,
                    "the stream stopped; the periodic task covers it"
                    if self._stopping
                    else "superseded by a newer one",
                )
                return

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            await asyncio.sleep(min(0.05, end - time.monotonic()))

    async def _shut(self, client: BinanceFuturesClient | None) -> None:
        """Record the state and let go of the gateway. Bounded: shutdown waits. The listenKey is left to lapse, never
        DELETEd: that would close every socket on it, the bot's own included (see the module docstring)."""
        if self._position_sync is not None and not self._position_sync.done():
            self._position_sync.cancel()
            logger.info(
                "user_stream position_sync_dropped account=%s: stopping; the periodic position sync covers it",
                self.label,
            )
        self._listen_key = None
        if client is not None:
            client.close()
        pending = [task for task in self._tasks if not task.done()]
        if pending:  # an enqueue or a state write in flight: let it land first, so "stopped" is the last word
            await asyncio.wait(pending, timeout=1.0)
        await self._call("state", record_state, self.account_id, StreamState.STOPPED)
        logger.info("user_stream event=stopped account=%s", self.label)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd else (exc.sent.code if exc.sent else 1006)
        return f"connection_closed_{code}"
    return f"{type(exc).__name__}: {messages.excerpt(exc)[:120]}"


def _describe_close(ws: ClientConnection) -> str:
    return f"closed_by_server_{ws.close_code}"
