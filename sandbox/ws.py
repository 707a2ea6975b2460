"""User-data WebSocket: ``/private/ws?listenKey=<key>&events=<E1>/<E2>/…`` (and ``/private/ws/<key>?events=…``).

Binance's routing since the legacy URLs were retired on 2026-04-23 ("Important WebSocket Change Notice", USDⓈ-M
websocket-market-streams): private traffic goes to ``/private``, subscribed by listenKey **and events**. A socket
without ``events`` is accepted and then delivers nothing (docs/DESIGN.md "What Binance really does" F17, seen by clients on production); only the
event types named in ``events`` (``/``-separated: ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, listenKeyExpired, TRADE_LITE,
ALGO_UPDATE, ACCOUNT_CONFIG_UPDATE, MARGIN_CALL, …) reach it. The root ``/ws/<key>`` is gone (404), as on Binance.

Each connection has a queue and one writer task, so events go out in the order the engine made them.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import WSMsgType, web

from . import events

log = logging.getLogger(__name__)
CONNECTION_MAX_MS = 24 * 60 * 60 * 1000  # Binance closes a user-data connection after 24 hours
_CLOSE = object()
_dumps = json.JSONEncoder(separators=(",", ":")).encode


# Subscription names that differ from the `e` of the events they select. Binance's documentation names the Algo
# service's event "Algo Order Update" (ALGO_ORDER_UPDATE in the list of subscribable types) while the frames it sends
# carry `"e": "ALGO_UPDATE"` (Event-Algo-Order-Update); either name selects those frames here.
SUBSCRIPTION_ALIASES = {"ALGO_ORDER_UPDATE": "ALGO_UPDATE"}


def parse_events(raw: str | None) -> frozenset:
    """The `events` query parameter: event type names separated by "/" (none when absent or empty)."""
    return frozenset(name for name in (raw or "").split("/") if name)


def event_type(raw: str):
    """The `e` of a raw frame, or None when it is not a JSON object with one (a malformed frame pushed on purpose)."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
        return None
    kind = event.get("e") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


class Connection:
    __slots__ = ("api_key", "listen_key", "connected_at", "ws", "request", "queue", "events", "subscribed")

    def __init__(self, api_key, listen_key, connected_at, ws, request, events=frozenset()):
        self.api_key, self.listen_key, self.connected_at = api_key, listen_key, connected_at
        self.ws, self.request = ws, request
        self.events: frozenset = frozenset(SUBSCRIPTION_ALIASES.get(name, name) for name in events)
        self.subscribed: frozenset = events  # the names as the client sent them
        self.queue: asyncio.Queue = asyncio.Queue()


class Hub:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.connections: dict[str, set[Connection]] = {}  # api_key -> live connections
        engine.on_event = self.publish
        engine.on_listen_key_gone = self.listen_key_gone

    def reset(self) -> None:
        for api_key in list(self.connections):
            self.drop(api_key, abort=False)

    def publish(self, account, event: dict) -> None:
        conns = self.connections.get(account.api_key)
        if conns:
            data, kind = _dumps(event), event["e"]
            for conn in conns:
                if conn.listen_key == account.listen_key and kind in conn.events:
                    conn.queue.put_nowait(data)

    def push_raw(self, account, raw: str) -> int:
        """Send `raw` text as is to the account's live connections (duplicates, stale or malformed frames): to
        those subscribed to its event type, or to all of them when it has none (a malformed frame)."""
        kind = event_type(raw)
        conns = [
            c
            for c in self.connections.get(account.api_key, ())
            if c.listen_key == account.listen_key and (kind is None or kind in c.events)
        ]
        for conn in conns:
            conn.queue.put_nowait(raw)
        return len(conns)

    def listen_key_gone(self, account, key: str, expired: bool) -> None:
        """The key expired (listenKeyExpired to those who asked for it, then closed) or was DELETEd: Binance keeps
        one key per account, so a DELETE closes every socket on it, whoever opened them."""
        for conn in list(self.connections.get(account.api_key, ())):
            if conn.listen_key == key:
                if expired and events.LISTEN_KEY_EXPIRED in conn.events:
                    conn.queue.put_nowait(_dumps(events.listen_key_expired(key, self.engine.now())))
                conn.queue.put_nowait(_CLOSE)

    def drop(self, api_key: str, abort: bool = True) -> int:
        """Cut the account's connections as a network failure would (TCP reset, no close frame)."""
        conns = list(self.connections.get(api_key, ()))
        for conn in conns:
            transport = conn.request.transport
            if abort and transport is not None:
                transport.abort()
            else:
                conn.queue.put_nowait(_CLOSE)
        return len(conns)

    def close_old_connections(self) -> None:
        now = self.engine.now()
        for conns in self.connections.values():
            for conn in conns:
                if now - conn.connected_at >= CONNECTION_MAX_MS:
                    conn.queue.put_nowait(_CLOSE)

    def count(self, api_key: str) -> int:
        return len(self.connections.get(api_key, ()))

    def peers(self, api_key: str) -> list[str]:
        """The source address of each live connection (which egress IP the client used), sorted."""
        return sorted(c.request.remote or "" for c in self.connections.get(api_key, ()))

    def subscriptions(self, api_key: str) -> list[list[str]]:
        """Each live connection's event types, sorted (for the control API)."""
        return sorted(sorted(c.subscribed) for c in self.connections.get(api_key, ()))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("listen_key") or request.query.get("listenKey", "")
        account = self.engine.account_for_listen_key(key)
        if account is None:
            return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Connection(
            account.api_key, key, self.engine.now(), ws, request, parse_events(request.query.get("events"))
        )
        self.connections.setdefault(account.api_key, set()).add(conn)
        writer = asyncio.ensure_future(self._write(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            writer.cancel()
            conns = self.connections.get(account.api_key)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self.connections[account.api_key]
        return ws

    async def _write(self, conn: Connection) -> None:
        try:
            while True:
                item = await conn.queue.get()
                if item is _CLOSE:
                    await conn.ws.close()
                    return
                await conn.ws.send_str(item)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        except Exception:  # never let a writer die silently with the socket open
            log.exception("user-data writer failed")
            await conn.ws.close()
