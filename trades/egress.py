"""One request-weight budget per egress IP, shared by every process of the fleet, and the pool of egress addresses.

Binance limits request weight per IP, not per API key or per process ("General Info" → LIMITS: 2,400 a minute on
USDⓈ-M, published in ``exchangeInfo.rateLimits``; intervals start on the minute). Every account behind one address
shares it, and an IP that keeps sending after a 429 is banned (418) from 2 minutes up to 3 days — every account on
it. So every Binance call of every worker, beat run, stream process and admin action asks this module first:

* ``acquire`` before sending: refused (``RateLimited``, nothing sent) while the egress is marked limited/banned by
  any process, or when the call's weight would take this minute's count past the share its priority may use. New
  orders weigh 0 on the IP: they pass a 429's mark (Binance serves them), not a 418's.
* ``record_used`` after an answer: the count becomes at least Binance's own ``X-MBX-USED-WEIGHT-1M`` (which also
  sees traffic we did not send, e.g. the bot's own on the same IP).
* ``mark_limited`` after a 429/418 anywhere: every caller on that egress stops until Retry-After.

Under pressure the more urgent work keeps the last of the budget (``PRIORITY_SHARES``): placements and cancels may
use all of it, post-cancel verification 95 %, listenKey keepalives 90 %, the pending reconcile 80 %, deep
reconciles and position sync 50 %. A share is a cap on the minute's count, not a reservation: what a lower priority
spends first in a minute, the higher ones lack. The gap between two shares is what the higher keeps whatever the lower
did: the pending reconcile keeps 30 % of each minute (720 of 2,400) from the position sync and the deep pass.

The store: Redis (atomic Lua scripts; a key per egress and minute, expiring) when ``BINANCE_BUDGET_URL`` — by default
the Celery broker URL — is redis://; otherwise an SQLite file under var/ (``BEGIN IMMEDIATE`` transactions), which
serves every process of one host, the zero-setup default.

Egress pools: ``BINANCE_SOURCE_ADDRESSES`` lists local addresses to bind outgoing Binance connections to; an account
always uses the same one (its id modulo their number), and each has its own budget. Empty: the default route.

Knows Binance's rules, not models: takes account ids and egress names.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

DEFAULT_WEIGHT_LIMIT = 2400  # Binance's USDⓈ-M REQUEST_WEIGHT per minute, when exchangeInfo is unknown
LIMITS_TTL_SEC = 3600.0  # how long exchangeInfo's rateLimits are trusted
MINUTE_MS = 60_000

ORDER, VERIFY, KEEPALIVE, RECONCILE, DEEP, POSITIONS = "order", "verify", "keepalive", "reconcile", "deep", "positions"
PRIORITY_SHARES = {ORDER: 1.0, VERIFY: 0.95, KEEPALIVE: 0.90, RECONCILE: 0.80, DEEP: 0.50, POSITIONS: 0.50}
DEFAULT_EGRESS = "default"


@dataclass(frozen=True)
class Refusal:
    """Why a call may not be sent now, and for how long (seconds)."""

    retry_after: float
    banned: bool
    reason: str  # "limited" (a 429 or 418 seen on this egress) or "budget" (the priority's share is used)


class WeightBudget(ABC):
    @abstractmethod
    def acquire(self, egress: str, weight: int, cap: int, now_ms: int) -> Refusal | None:
        """Count `weight` on this minute of `egress` unless it is limited or the count would pass `cap`. A call of
        weight 0 (a new order: it counts on the account's ORDERS limits, not the IP's) passes a 429's mark, not a
        418's: a banned IP is refused everything."""

    @abstractmethod
    def record_used(self, egress: str, used: int, now_ms: int) -> None:
        """Binance said this minute's weight of the IP is `used`: never count less."""

    @abstractmethod
    def mark_limited(self, egress: str, until_ms: int, banned: bool) -> None:
        """A 429 (banned False) or 418 seen: nobody on `egress` sends before `until_ms` (the longest mark wins)."""

    @abstractmethod
    def used(self, egress: str, now_ms: int) -> int: ...

    @abstractmethod
    def limited_marks(self, now_ms: int) -> dict[str, tuple[int, bool]]:
        """Every egress marked limited at `now_ms`: its name → (until_ms, banned). What another process (the alert
        evaluator) reads to tell a 429/418 anywhere in the fleet."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every count and mark (tests)."""


class NoBudget(WeightBudget):
    """A budget that never refuses and forgets 429/418 marks: every process on its own, as before a shared budget
    existed (benchmarks' baselines), or a gateway fed one canned answer after another, each judged on its own
    (tests). Never what a deployment uses."""

    def acquire(self, egress: str, weight: int, cap: int, now_ms: int) -> Refusal | None:
        return None

    def record_used(self, egress: str, used: int, now_ms: int) -> None:
        pass

    def mark_limited(self, egress: str, until_ms: int, banned: bool) -> None:
        pass

    def used(self, egress: str, now_ms: int) -> int:
        return 0

    def limited_marks(self, now_ms: int) -> dict[str, tuple[int, bool]]:
        return {}

    def clear(self) -> None:
        pass


def _window(now_ms: int) -> int:
    return now_ms // MINUTE_MS


def _remaining_window_sec(now_ms: int) -> float:
    return (MINUTE_MS - now_ms % MINUTE_MS) / 1000


# --- Redis --------------------------------------------------------------------------------------------------------

_ACQUIRE = """
local mark = redis.call('HMGET', KEYS[2], 'until', 'banned')
local now = tonumber(ARGV[3])
local weight, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
if mark[1] and tonumber(mark[1]) > now and (weight > 0 or mark[2] == '1') then
  return {1, mark[1], mark[2] or '0'}
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if weight > 0 and used + weight > cap then return {2, tostring(used), '0'} end
used = redis.call('INCRBY', KEYS[1], weight)
redis.call('PEXPIRE', KEYS[1], 120000)
return {0, tostring(used), '0'}
"""
_RECORD = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > used then redis.call('SET', KEYS[1], ARGV[1], 'PX', 120000) end
return 0
"""
_MARK = """
local current = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local untl = tonumber(ARGV[1])
if untl > current then
  redis.call('HSET', KEYS[1], 'until', ARGV[1], 'banned', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.max(untl - tonumber(ARGV[3]), 1) + 60000)
end
return 0
"""


class RedisBudget(WeightBudget):
    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.prefix = prefix
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._record = self.redis.register_script(_RECORD)
        self._mark = self.redis.register_script(_MARK)

    def _keys(self, egress: str, now_ms: int) -> list[str]:
        return [f"{self.prefix}:{egress}:w:{_window(now_ms)}", f"{self.prefix}:{egress}:limited"]

    def acquire(self, egress: str, weight: int, cap: int, now_ms: int) -> Refusal | None:
        kind, value, banned = self._acquire(keys=self._keys(egress, now_ms), args=[int(weight), int(cap), now_ms])
        if int(kind) == 1:
            return Refusal((int(value) - now_ms) / 1000, banned in (b"1", "1"), "limited")
        if int(kind) == 2:
            return Refusal(_remaining_window_sec(now_ms), False, "budget")
        return None

    def record_used(self, egress: str, used: int, now_ms: int) -> None:
        self._record(keys=self._keys(egress, now_ms)[:1], args=[int(used)])

    def mark_limited(self, egress: str, until_ms: int, banned: bool) -> None:
        self._mark(keys=self._keys(egress, until_ms)[1:], args=[int(until_ms), int(banned), int(time.time() * 1000)])

    def used(self, egress: str, now_ms: int) -> int:
        return int(self.redis.get(self._keys(egress, now_ms)[0]) or 0)

    def limited_marks(self, now_ms: int) -> dict[str, tuple[int, bool]]:
        marks: dict[str, tuple[int, bool]] = {}
        head, tail = f"{self.prefix}:", ":limited"
        for raw in self.redis.scan_iter(match=f"{self.prefix}:*:limited", count=500):
            key = raw.decode() if isinstance(raw, bytes) else raw
            until, banned = self.redis.hmget(key, "until", "banned")
            if until is not None and int(until) > now_ms:
                marks[key[len(head) : -len(tail)]] = (int(until), banned in (b"1", "1"))
        return marks

    def clear(self) -> None:
        for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=500):
            self.redis.delete(key)


# --- SQLite (one host, zero setup) --------------------------------------------------------------------------------


class SqliteBudget(WeightBudget):
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._local = threading.local()
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS weight (egress TEXT, minute INTEGER, used INTEGER, "
                "PRIMARY KEY (egress, minute))"
            )
            db.execute("CREATE TABLE IF NOT EXISTS limited (egress TEXT PRIMARY KEY, until_ms INTEGER, banned INTEGER)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():  # never share a connection over fork
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a count lost in a power cut is harmless, an fsync per call not
            self._local.db, self._local.pid = db, os.getpid()
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
            return self.db

        def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> SqliteBudget._Tx:
        return self._Tx(self._db())

    def acquire(self, egress: str, weight: int, cap: int, now_ms: int) -> Refusal | None:
        minute = _window(now_ms)
        with self._tx() as db:
            row = db.execute("SELECT until_ms, banned FROM limited WHERE egress=?", (egress,)).fetchone()
            if row and row[0] > now_ms and (weight > 0 or row[1]):
                return Refusal((row[0] - now_ms) / 1000, bool(row[1]), "limited")
            row = db.execute("SELECT used FROM weight WHERE egress=? AND minute=?", (egress, minute)).fetchone()
            used = row[0] if row else 0
            if weight > 0 and used + weight > cap:
                return Refusal(_remaining_window_sec(now_ms), False, "budget")
            db.execute(
                "INSERT INTO weight VALUES (?, ?, ?) ON CONFLICT (egress, minute) DO UPDATE SET used=used+?",
                (egress, minute, weight, weight),
            )
            db.execute("DELETE FROM weight WHERE minute < ?", (minute - 1,))
        return None

    def record_used(self, egress: str, used: int, now_ms: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO weight VALUES (?, ?, ?) ON CONFLICT (egress, minute) "
                "DO UPDATE SET used=max(used, excluded.used)",
                (egress, _window(now_ms), int(used)),
            )

    def mark_limited(self, egress: str, until_ms: int, banned: bool) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO limited VALUES (?, ?, ?) ON CONFLICT (egress) DO UPDATE SET "
                "banned=CASE WHEN excluded.until_ms > until_ms THEN excluded.banned ELSE banned END, "
                "until_ms=max(until_ms, excluded.until_ms)",
                (egress, int(until_ms), int(banned)),
            )

    def used(self, egress: str, now_ms: int) -> int:
        row = (
            self._db()
            .execute("SELECT used FROM weight WHERE egress=? AND minute=?", (egress, _window(now_ms)))
            .fetchone()
        )
        return row[0] if row else 0

    def limited_marks(self, now_ms: int) -> dict[str, tuple[int, bool]]:
        rows = self._db().execute("SELECT egress, until_ms, banned FROM limited WHERE until_ms > ?", (now_ms,))
        return {egress: (int(until), bool(banned)) for egress, until, banned in rows.fetchall()}

    def clear(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM weight")
            db.execute("DELETE FROM limited")


# --- the process's budget, limits and pool ---------------------------------------------------------------------------

_lock = threading.Lock()
_budgets: dict[str, WeightBudget] = {}


def budget_url() -> str:
    """BINANCE_BUDGET_URL, else the Celery broker's when it is Redis, else an SQLite file under var/."""
    url = _setting("BINANCE_BUDGET_URL", "")
    if url:
        return url
    broker = _setting("CELERY_BROKER_URL", "")
    if broker.startswith(("redis://", "rediss://")):
        return broker
    return f"sqlite:///{os.path.join(str(_setting('VAR_DIR', 'var')), 'binance-budget.sqlite3')}"


def shared_budget() -> WeightBudget:
    """The budget every gateway of this process uses (one per store URL)."""
    url = budget_url()
    with _lock:
        budget = _budgets.get(url)
        if budget is None:
            if url.startswith(("redis://", "rediss://", "unix://")):
                budget = RedisBudget(url, _setting("BINANCE_BUDGET_PREFIX", "tradeops:egress"))
            elif url.startswith("sqlite:///"):
                budget = SqliteBudget(url[len("sqlite:///") :])
            else:
                raise ValueError(f"BINANCE_BUDGET_URL: redis://… or sqlite:///path, not {url!r}")
            _budgets[url] = budget
    return budget


class ExchangeLimits:
    """REQUEST_WEIGHT per minute of each exchange (by REST base URL), from exchangeInfo.rateLimits, per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, tuple[int, float]] = {}  # rest_url -> (limit, time.monotonic() learnt)
        self.assumed: int | None = None  # tests: the limit of every exchange not learnt yet, without asking

    def get(self, rest_url: str) -> int | None:
        """The limit when known and fresh, else None (the caller fetches it)."""
        with self._lock:
            entry = self._limits.get(rest_url)
        if entry is None or time.monotonic() - entry[1] > LIMITS_TTL_SEC:
            return self.assumed
        return entry[0]

    def record(self, rest_url: str, limit: int, ttl_sec: float = LIMITS_TTL_SEC) -> None:
        with self._lock:
            self._limits[rest_url] = (int(limit), time.monotonic() - LIMITS_TTL_SEC + ttl_sec)

    def reset(self, assumed: int | None = None) -> None:
        with self._lock:
            self._limits.clear()
            self.assumed = assumed


EXCHANGE_LIMITS = ExchangeLimits()


def weight_limit_from_exchange_info(info: Any) -> int | None:
    """The 1-minute REQUEST_WEIGHT limit in an exchangeInfo answer, or None."""
    for limit in (info or {}).get("rateLimits", []) if isinstance(info, dict) else []:
        if (
            isinstance(limit, dict)
            and limit.get("rateLimitType") == "REQUEST_WEIGHT"
            and limit.get("interval") == "MINUTE"
            and limit.get("intervalNum") == 1
        ):
            try:
                return int(limit["limit"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def source_addresses() -> list[str]:
    raw = _setting("BINANCE_SOURCE_ADDRESSES", "")
    if isinstance(raw, (list, tuple)):
        return [str(a).strip() for a in raw if str(a).strip()]
    return [a.strip() for a in str(raw).split(",") if a.strip()]


def source_address_for(account_id: Any) -> str | None:
    """The local address the account's Binance connections leave from (stable: by account id), or None for the
    default route."""
    addresses = source_addresses()
    if not addresses:
        return None
    try:
        index = int(account_id)
    except (TypeError, ValueError):
        index = 0
    return addresses[index % len(addresses)]


def egress_name(source_address: str | None, host: str) -> str:
    """The budget's key: which address, to which exchange host (mainnet and testnet limit separately)."""
    return f"{source_address or DEFAULT_EGRESS}@{host}"


def share_of(priority: str) -> float:
    try:
        return PRIORITY_SHARES[priority]
    except KeyError:
        raise ValueError(f"unknown priority {priority!r}; one of {sorted(PRIORITY_SHARES)}") from None


def _setting(name: str, default: Any) -> Any:
    from django.conf import settings

    if not settings.configured:
        return default
    value = getattr(settings, name, None)
    return default if value in (None, "") else value
