"""A fleet on ONE egress IP under Binance's real limits, in simulated time: N accounts × S symbols × T pending trades,
with the streams healthy, with the streams unhealthy, and a reconnect storm; against today's reconcile (every
account every minute, one order look-up per pending trade, no shared budget) in the same run, on the same data.

    .venv/bin/python bench/fleet.py [--accounts 1000] [--symbols 5] [--trades 50] [--healthy-minutes 25]
        [--unhealthy-minutes 6] [--storm-minutes 15] [--smoke]
    (DATABASE_URL=mysql://… for MariaDB, else a throw-away SQLite file; CELERY_BROKER_URL=redis://…/7 puts the weight
    budget in Redis, else the embedded SQLite budget)

What is real: the sandbox (a separate process) limits request weight per source IP as Binance does (2,400 a minute,
in fixed minutes of its clock; 429 with Retry-After, then 418 bans from 2 minutes up), and every call goes through
python-binance's HTTP path from one loopback address, through the fleet-wide weight budget (trades/egress.py) and
its priorities. The beat's selection is `reconcile_all_accounts` and `sync_all_positions` themselves (their
apply_async captured into the bench's queue), each run is `services.reconcile_pending` /
`services.sync_positions_with_binance`, and what is retried, and when, is `tasks._retry_if_unfinished` (beat runs
expire 55 s after they are sent, position syncs 275 s, retries 55 s after they are due, as the tasks say).

What is simulated: time, and the worker. One worker (a loop in this process) takes the queue in due order, as one
Celery worker would; while it has work, time runs at the wall clock's pace; when nothing is due (the budget's minute
is used, or nothing to do), the clock jumps to the next due message or beat: the sandbox's clock
(`set_clock_offset`), our exchange clock offset (as after a /time sync) and Django's `timezone.now` move together.
So a 25-minute run takes the wall time of the work in it, not 25 minutes, and Binance's minute windows, the
budget's, RECONCILE_AUDIT_SEC and the tasks' expiries all see the same minutes. The stream processes are not run:
their effects in the database are written by the bench (`stream_state` "connected" and a fresh heartbeat each
minute while healthy; on a reconnect a new `stream_state_at` and, per account, the ws_connect reconcile and position
sync the stream enqueues). ListenKey keepalives are not sent (about 33 weight a minute at 1,000 accounts, from the
keepalives' own 90 % share).

Figures: weight per minute and 429/418 from the sandbox's own per-IP counters (`stats()["weight_by_minute"]`,
`refused_by_ip`); the oldest time since a pending trade was last verified from the database: per account, the ends
of its "ok" pending reconciles (ReconcileRun, every pending trade of the account verified), the longest interval
without one in the scenario (its start counting from the last verification before it). The steady state before
the healthy run (every account audited and position-synced once in the previous 10 minutes, position mode read in
the last hour, staggered evenly) is written by the bench.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _django import setup_django  # noqa: E402 — Django must be configured before the project's modules load

os.environ.setdefault("BINANCE_BUDGET_PREFIX", f"tradeops:bench-fleet:{os.getpid()}")
setup_django()

import django.utils.timezone
from celery import Task
from django.conf import settings
from django.db import connection
from django.test import override_settings

from reconciliation import services, tasks
from reconciliation.models import AccountSyncState, ReconcileRun
from reconciliation.positions.sync import PENDING_TRUSTED
from reconciliation.reconcile.pending import WS_CONNECT
from sandbox.control import SandboxControl
from sandbox.testing import running_sandbox
from trades import egress
from trades.binance_client import EXCHANGE_CLOCK, BinanceFuturesClient
from trades.exceptions import RateLimited
from trades.models import Account, Trade

BASELINE_IP, OURS_IP = "127.0.0.2", "127.0.0.3"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]
MINUTE_MS = 60_000
POSITIONS_EVERY_MS = 300_000  # the position sync's schedule (migration 0002)
_RealDatetime = datetime


# --- simulated time -----------------------------------------------------------------------------------------------


class SimClock:
    """Simulated time = the wall clock + an offset, shared by the sandbox, our exchange clock and Django's now."""

    def __init__(self, control: SandboxControl, rest_url: str) -> None:
        self.control, self.rest_url, self.offset_ms = control, rest_url, 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def now(self) -> datetime:
        return _RealDatetime.fromtimestamp(self.now_ms() / 1000, UTC)

    def jump_to(self, t_ms: int) -> None:
        """Skip idle time: nothing is due before t_ms."""
        ahead = t_ms - self.now_ms()
        if ahead > 0:
            self._set(self.offset_ms + ahead)

    def _set(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms
        self.control.set_clock_offset(offset_ms)
        EXCHANGE_CLOCK.record(self.rest_url, offset_ms)  # as a /time sync would find it

    @contextmanager
    def installed(self) -> Iterator[None]:
        clock = self

        class SimDatetime(_RealDatetime):
            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]  # the one method replaced
                return _RealDatetime.fromtimestamp(clock.now_ms() / 1000, tz)

        real = vars(django.utils.timezone)["datetime"]
        setattr(django.utils.timezone, "datetime", SimDatetime)  # noqa: B010 — timezone.now() reads this global
        self._set(self.offset_ms)
        try:
            yield
        finally:
            setattr(django.utils.timezone, "datetime", real)  # noqa: B010 — as above


# --- the queue and one worker -------------------------------------------------------------------------------------


@dataclass(order=True)
class Message:
    due_ms: int
    seq: int
    task: str = field(compare=False)  # "reconcile" or "positions"
    account_id: int = field(compare=False)
    reason: str = field(compare=False)
    expires_ms: int | None = field(compare=False, default=None)
    retries: int = field(compare=False, default=0)


class _Retry(Exception):
    def __init__(self, countdown: float, max_retries: int | None) -> None:
        self.countdown, self.max_retries = countdown, max_retries


class _TaskShim:
    """What tasks._retry_if_unfinished needs of a bound task: request.retries, and retry() (which we raise)."""

    def __init__(self, retries: int) -> None:
        self.request = type("Request", (), {"retries": retries})()

    def retry(self, countdown: float = 0, max_retries: int | None = None, **_: Any) -> _Retry:
        return _Retry(countdown, max_retries)


class Fleet:
    """The queue a Celery worker would take from, the beats that fill it, and one worker that drains it."""

    def __init__(self, clock: SimClock, ids: list[int]) -> None:
        self.clock, self.ids = clock, ids
        self.queue: list[Message] = []
        self.seq = itertools.count()
        self.counts: Counter[str] = Counter()
        self.accounts = {a.pk: a for a in Account.objects.filter(pk__in=ids)}
        self.healthy = False
        self.position_sync = True
        self.on_processed: Callable[[], bool] | None = None  # True: the scenario is over

    def push(self, task: str, account_id: int, reason: str, *, delay_ms: int = 0, expires_sec: float | None = None):
        due = self.clock.now_ms() + delay_ms
        expires = None if expires_sec is None else due + int(expires_sec * 1000)
        heapq.heappush(self.queue, Message(due, next(self.seq), task, account_id, reason, expires))
        self.counts[f"{task} sent"] += 1

    @contextmanager
    def capturing_fan_out(self) -> Iterator[None]:
        """The beat tasks' apply_async lands in this queue."""
        reconcile, positions = tasks.reconcile_account.apply_async, tasks.sync_positions.apply_async

        def reconcile_async(args: tuple, kwargs: dict | None = None, expires: float | None = None, **_: Any) -> None:
            self.push("reconcile", args[0], (kwargs or {}).get("reason", "beat"), expires_sec=expires)

        def positions_async(args: tuple, kwargs: dict | None = None, expires: float | None = None, **_: Any) -> None:
            self.push("positions", args[0], (kwargs or {}).get("reason", "beat"), expires_sec=expires)

        # setattr: the captures do not take apply_async's every option, only what the fan-outs pass
        setattr(tasks.reconcile_account, "apply_async", reconcile_async)  # noqa: B010 — see above
        setattr(tasks.sync_positions, "apply_async", positions_async)  # noqa: B010 — see above
        try:
            yield
        finally:
            setattr(tasks.reconcile_account, "apply_async", reconcile)  # noqa: B010 — restored
            setattr(tasks.sync_positions, "apply_async", positions)  # noqa: B010 — restored

    def beat(self, minute_ms: int) -> None:
        if self.healthy:  # the stream processes' heartbeat, every refresh
            AccountSyncState.objects.filter(account_id__in=self.ids).update(stream_heartbeat_at=self.clock.now())
        tasks.reconcile_all_accounts()
        if self.position_sync and minute_ms % POSITIONS_EVERY_MS == 0:
            tasks.sync_all_positions()

    def run_until(self, end_ms: int, first_beat_ms: int | None = None) -> None:
        """Beats at every minute of the sandbox clock from first_beat_ms (default: the next minute), the worker in
        between, until end_ms (or until on_processed says so)."""
        next_beat = first_beat_ms or (self.clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS
        while True:
            now = self.clock.now_ms()
            if now >= next_beat:
                if next_beat >= end_ms:
                    return
                self.beat(next_beat)
                next_beat += MINUTE_MS
                continue
            if self.queue and self.queue[0].due_ms <= now:
                self.process(heapq.heappop(self.queue))
                if self.on_processed is not None and self.on_processed():
                    return
                continue
            self.clock.jump_to(min(next_beat, self.queue[0].due_ms if self.queue else next_beat))

    def process(self, msg: Message) -> None:
        now = self.clock.now_ms()
        if msg.expires_ms is not None and now > msg.expires_ms:
            self.counts[f"{msg.task} expired"] += 1
            return
        account = self.accounts[msg.account_id]
        wait = tasks.connect_wait_sec(msg.account_id, msg.reason, msg.retries) if msg.task == "positions" else None
        if wait is not None:  # as the task does: a (re)connect's position sync waits for the connect reconcile
            heapq.heappush(
                self.queue,
                Message(
                    now + int(wait * 1000), next(self.seq), msg.task, msg.account_id, msg.reason, None, msg.retries + 1
                ),
            )
            self.counts["positions waited for the connect reconcile"] += 1
            return
        if msg.task == "reconcile" and tasks.connect_reconcile_covered(msg.account_id, msg.reason, msg.retries):
            self.counts[f"reconcile skipped: {tasks.CONNECT_COVERED}"] += 1  # as the task does
            return
        if msg.task == "reconcile":
            report = services.reconcile_pending(account, reason=msg.reason)
        else:
            report = services.sync_positions_with_binance(account, reason=msg.reason)
        self.counts[f"{msg.task} {report['outcome']}"] += 1
        try:
            # the shim has the two things the retry policy reads of a bound task (request.retries, retry())
            tasks._retry_if_unfinished(cast(Task, _TaskShim(msg.retries)), report, msg.reason)
        except _Retry as retry:
            limit = retry.max_retries if retry.max_retries is not None else tasks.ExchangeTask.max_retries
            if msg.retries >= limit:
                self.counts[f"{msg.task} gave up"] += 1
                return
            due = self.clock.now_ms() + int(retry.countdown * 1000)
            expires = None if msg.expires_ms is None else due + tasks.RETRY_EXPIRES_SEC * 1000
            heapq.heappush(
                self.queue,
                Message(due, next(self.seq), msg.task, msg.account_id, msg.reason, expires, msg.retries + 1),
            )
            self.counts[f"{msg.task} retried"] += 1


# --- set-up -------------------------------------------------------------------------------------------------------


def make_fleet(control: SandboxControl, prefix: str, accounts: int, trades: int, symbols: list[str]) -> list[int]:
    """Accounts with `trades` pending trades each over `symbols`, NEW orders resting in the sandbox, each row as the
    placement answer left it (NEW, orderId, updateTime): the periodic reconcile's everyday case."""
    ids = []
    per_symbol = trades // len(symbols)
    for a in range(accounts):
        creds = control.create_account()
        account = Account.objects.create(name=f"{prefix}{a}", api_key=creds["api_key"], api_secret=creds["api_secret"])
        rows = []
        for symbol in symbols:
            bulk = control.bulk_orders(
                creds["api_key"], symbol, per_symbol, price="1", quantity="10", client_order_id_prefix=f"{prefix}{a}-"
            )
            placed_at = control.get_order(creds["api_key"], symbol, order_id=bulk["first_order_id"])["updateTime"]
            rows += [
                Trade(
                    account=account,
                    symbol=symbol,
                    side="BUY",
                    quantity=Decimal("10"),
                    price=Decimal("1"),
                    client_order_id=f"{prefix}{a}-{order_id}",
                    entry_order_id=order_id,
                    exchange_status="NEW",
                    exchange_update_time=placed_at,
                )
                for order_id in range(bulk["first_order_id"], bulk["last_order_id"] + 1)
            ]
        Trade.objects.bulk_create(rows)
        ids.append(account.pk)
    return ids


def steady_state(clock: SimClock, ids: list[int]) -> None:
    """Every stream connected an hour ago; each account audited and position-synced once in the last
    RECONCILE_AUDIT_SEC, its position mode read in the last hour, all staggered evenly (as a fleet running for a
    while is)."""
    now, n, audit = clock.now(), len(ids), settings.RECONCILE_AUDIT_SEC
    runs = []
    for i, account_id in enumerate(ids):
        at = now - timedelta(seconds=audit * (i + 1) / n)
        report = {"kind": "pending", "outcome": "ok"}
        AccountSyncState.objects.update_or_create(
            account_id=account_id,
            defaults={
                "stream_state": "connected",
                "stream_state_at": now - timedelta(hours=1),
                "stream_heartbeat_at": now,
                "stream_deaf_since": None,
                "last_reconcile_at": at,
                "last_reconcile_report": report,
                "last_position_sync_at": at,
            },
        )
        Account.objects.filter(pk=account_id).update(position_mode_checked_at=now - timedelta(seconds=3600 * i / n))
        for kind in (ReconcileRun.Kind.PENDING, ReconcileRun.Kind.POSITIONS):
            runs.append(
                ReconcileRun(
                    account_id=account_id, kind=kind, reason="beat", outcome="ok", started_at=at, report=report
                )
            )
    ReconcileRun.objects.bulk_create(runs)


# --- figures from the sandbox and the database --------------------------------------------------------------------


@dataclass
class Figures:
    name: str
    sim_minutes: float
    wall_sec: float
    weight_per_minute: list[int]
    n429: int
    n418: int
    oldest_verified_sec: float | None = None
    note: str = ""
    counts: Counter[str] = field(default_factory=Counter)


def ip_figures(control: SandboxControl, ip: str, start_ms: int, end_ms: int) -> tuple[list[int], int, int]:
    stats = control.stats()
    minutes = {int(m): used for m, used in stats["weight_by_minute"].get(ip, {}).items()}
    per_minute = [minutes.get(m, 0) for m in range(start_ms // MINUTE_MS, (end_ms - 1) // MINUTE_MS + 1)]
    refused = stats["refused_by_ip"].get(ip, {})
    return per_minute, refused.get("429", 0), refused.get("418", 0)


def verification_gaps(ids: list[int], start: datetime, end: datetime) -> tuple[dict[int, float], dict[int, float]]:
    """Per account, the longest time in [start, end] since its pending trades were last verified: the ends of its
    "ok" pending reconciles and position syncs (started_at + duration), the last one before `start` counting too;
    and the same counting only the intervals that began in the run (what the run's own cadence gives)."""
    ends: dict[int, list[datetime]] = {account_id: [] for account_id in ids}
    runs = ReconcileRun.objects.filter(
        account_id__in=ids,
        kind__in=[ReconcileRun.Kind.PENDING, ReconcileRun.Kind.POSITIONS],  # a position sync reconciles them first
        outcome=ReconcileRun.Outcome.OK,
        started_at__lte=end,
    ).values_list("account_id", "started_at", "duration_ms", f"report__extra__{PENDING_TRUSTED}")
    for account_id, started, duration, trusted in runs:
        if trusted not in (None, False):  # … unless it left them to the audit
            continue
        ends[account_id].append(started + timedelta(milliseconds=duration))
    gaps, within = {}, {}
    for account_id, times in ends.items():
        before = [t for t in times if t <= start]
        points = [max(before) if before else start] + sorted(t for t in times if start < t <= end) + [end]
        intervals = [(b - a).total_seconds() for a, b in itertools.pairwise(points)]
        gaps[account_id], within[account_id] = max(intervals), max(intervals[1:], default=0.0)
    return gaps, within


# --- the scenarios ------------------------------------------------------------------------------------------------


def baseline(control: SandboxControl, rest_url: str, ids: list[int], per_account: int) -> Figures:
    """Today's reconcile: every account every minute, one GET /fapi/v1/order per pending trade, no shared budget.
    Sent until the pass ends or the IP is banned (418): Binance would refuse the rest of it, for every account."""
    trades_logger = logging.getLogger("trades")
    level = trades_logger.level
    trades_logger.setLevel(logging.CRITICAL)  # thousands of refusals: counted, not logged
    control.reset_stats()
    started_ms, wall = control.server_time(), time.perf_counter()
    sent = banned = 0
    for account_id in ids:
        account = Account.objects.get(pk=account_id)
        with BinanceFuturesClient(
            account.api_key, account.api_secret, rest_url=rest_url, source_address=BASELINE_IP, budget=egress.NoBudget()
        ) as client:
            for trade in Trade.objects.get_pending_recent(account_id, limit=10**6):
                sent += 1
                try:
                    services.apply_order_snapshot(trade, services.fetch_order(client, trade), "reconcile")
                except RateLimited as exc:
                    banned = banned or exc.banned
                if banned:
                    break
        if banned:
            break
    trades_logger.setLevel(level)
    end_ms = control.server_time() + 1
    per_minute, n429, n418 = ip_figures(control, BASELINE_IP, started_ms, end_ms)
    need = len(ids) * per_account
    return Figures(
        "today's reconcile (every minute, 1 GET per trade, no shared budget)",
        1,
        time.perf_counter() - wall,
        per_minute,
        n429,
        n418,
        note=f"needs {need:,} weight a minute; {'banned (418) after ' if banned else 'sent '}{sent:,} requests",
    )


def scenario(
    name: str, fleet: Fleet, control: SandboxControl, minutes: float, *, until: Callable[[], bool] | None = None
) -> Figures:
    print(f"running: {name}, {minutes:g} simulated minutes", file=sys.stderr, flush=True)
    clock = fleet.clock
    start_ms = (clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS  # the first beat, on a minute of the sandbox clock
    clock.jump_to(start_ms)
    start, wall = datetime.fromtimestamp(start_ms / 1000, UTC), time.perf_counter()
    fleet.counts = Counter()
    fleet.on_processed = until
    fleet.run_until(start_ms + int(minutes * MINUTE_MS), first_beat_ms=start_ms)
    end_ms, end = clock.now_ms(), clock.now()
    per_minute, n429, n418 = ip_figures(control, OURS_IP, start_ms, end_ms)
    gaps, within = verification_gaps(fleet.ids, start, end)
    return Figures(
        name,
        (end_ms - start_ms) / MINUTE_MS,
        time.perf_counter() - wall,
        per_minute,
        n429,
        n418,
        oldest_verified_sec=max(gaps.values()),
        counts=fleet.counts,
        note=f"{_gap_note(gaps)}; intervals begun in the run: oldest {max(within.values()):,.0f} s",
    )


def _gap_note(gaps: dict[int, float]) -> str:
    values = sorted(gaps.values())
    return f"per account: median {values[len(values) // 2]:.0f} s, p90 {values[int(len(values) * 0.9)]:.0f} s"


def storm(fleet: Fleet, control: SandboxControl, max_minutes: float) -> Figures:
    """Every socket dropped at once while one order per account filled: each stream reconnects (a new
    stream_state_at) and enqueues its ws_connect reconcile and position sync, all at the same instant. The stream
    process ramps only new streams (start, takeover: USER_STREAM_CONNECTS_PER_SEC); a dropped socket reconnects
    after its own backoff (0.5–1 s), so all at once is what a real drop gives. Done when every filled trade is open
    in the database."""
    print(f"running: reconnect storm, at most {max_minutes:g} simulated minutes", file=sys.stderr, flush=True)
    clock = fleet.clock
    clock.jump_to((clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS + 30_000)  # mid-minute, after the beat
    filled = []
    for account_id in fleet.ids:
        trade = Trade.objects.filter(account_id=account_id, status=Trade.Status.PENDING).order_by("pk").first()
        assert trade is not None
        control.fill_order(fleet.accounts[account_id].api_key, trade.symbol, order_id=trade.entry_order_id)
        filled.append(trade.pk)
    dropped = clock.now()
    AccountSyncState.objects.filter(account_id__in=fleet.ids).update(
        stream_state="connected", stream_state_at=dropped, stream_heartbeat_at=dropped
    )
    start_ms, wall = clock.now_ms(), time.perf_counter()
    fleet.counts = Counter()
    for account_id in fleet.ids:
        fleet.push("reconcile", account_id, WS_CONNECT)
        if fleet.position_sync:
            fleet.push("positions", account_id, WS_CONNECT)
    checks = itertools.count()

    def all_open() -> bool:
        return next(checks) % 50 == 0 and not Trade.objects.filter(pk__in=filled, status=Trade.Status.PENDING).exists()

    fleet.on_processed = all_open
    fleet.run_until(start_ms + int(max_minutes * MINUTE_MS))
    end_ms = clock.now_ms()
    left = Trade.objects.filter(pk__in=filled, status=Trade.Status.PENDING).count()
    last = Trade.objects.filter(pk__in=filled).order_by("-updated_at").values_list("updated_at", flat=True).first()
    done_sec = (last - dropped).total_seconds() if last and not left else None
    per_minute, n429, n418 = ip_figures(control, OURS_IP, start_ms, end_ms)
    return Figures(
        "reconnect storm (every socket dropped at once, a fill in each gap)",
        (end_ms - start_ms) / MINUTE_MS,
        time.perf_counter() - wall,
        per_minute,
        n429,
        n418,
        oldest_verified_sec=done_sec,
        counts=fleet.counts,
        note=(
            f"every gap fill reconciled after {done_sec:.0f} s"
            if done_sec is not None
            else f"{left} gap fills still pending after {max_minutes:g} min"
        ),
    )


# --- main ---------------------------------------------------------------------------------------------------------


def print_table(rows: list[Figures], args: argparse.Namespace, per_account: int) -> None:
    print(
        f"\none egress IP: {args.accounts:,} accounts × {args.symbols} symbols × {per_account} pending trades, "
        f"DB {connection.vendor}, budget {egress.budget_url().split(':', 1)[0]}, RECONCILE_AUDIT_SEC "
        f"{settings.RECONCILE_AUDIT_SEC}, sandbox with Binance's per-IP limits (2,400 weight/min, 429 → 418)\n"
    )
    print(
        "| scenario | simulated min | wall s | weight/min on the IP: max (mean) | 429 | 418 "
        "| oldest since a pending trade was verified | notes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for f in rows:
        mean = sum(f.weight_per_minute) / max(len(f.weight_per_minute), 1)
        oldest = "—" if f.oldest_verified_sec is None else f"{f.oldest_verified_sec:,.0f} s"
        print(
            f"| {f.name} | {f.sim_minutes:.1f} | {f.wall_sec:.0f} | {max(f.weight_per_minute, default=0):,} "
            f"({mean:,.0f}) | {f.n429:,} | {f.n418:,} | {oldest} | {f.note} |"
        )
    print()
    for f in rows:
        if f.counts:
            print(f"{f.name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(f.counts.items())))
        print(f"{f.name}: weight per minute {f.weight_per_minute}")
    goal = settings.RECONCILE_AUDIT_SEC + 60
    print(
        f"\ngoals: weight/min ≤ 2,400 with 0 × 429/418; healthy streams: oldest ≤ {goal} s (RECONCILE_AUDIT_SEC + 60)"
    )
    for f in rows:
        if f.n429 or f.n418:
            print(f"NOT A RESULT: {f.name} got {f.n429} × 429 and {f.n418} × 418 — Binance would have banned this IP")


def main(argv: list[str] | None = None) -> list[Figures]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--trades", type=int, default=50, help="pending trades per account")
    parser.add_argument("--healthy-minutes", type=float, default=25.0)
    parser.add_argument("--unhealthy-minutes", type=float, default=6.0)
    parser.add_argument("--storm-minutes", type=float, default=15.0, help="at most")
    parser.add_argument(
        "--scenarios", default="healthy,storm,unhealthy", help="which to run, in this order (comma-separated)"
    )
    parser.add_argument(
        "--no-position-sync", action="store_true", help="leave the position sync out (the pending reconcile alone)"
    )
    parser.add_argument("--smoke", action="store_true", help="20 accounts × 2 symbols × 4 trades, short runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.accounts, args.symbols, args.trades = 20, 2, 4
        args.healthy_minutes, args.unhealthy_minutes, args.storm_minutes = 12, 2, 5
    random.seed(7)
    symbols = SYMBOLS[: args.symbols]
    per_account = (args.trades // len(symbols)) * len(symbols)
    logging.getLogger("reconciliation").setLevel(logging.ERROR)
    logging.getLogger("trades").setLevel(logging.ERROR)

    with (
        running_sandbox() as sandbox,
        override_settings(BINANCE_FUTURES_REST_URL=sandbox.rest_url, BINANCE_SOURCE_ADDRESSES=OURS_IP),
    ):
        control = sandbox.control
        t0 = time.perf_counter()
        prefix = f"f{int(time.time()) % 100000}-"  # names stay unique when DATABASE_URL is reused
        Account.objects.update(is_active=False)  # a reused database: only this run's fleet is active
        ids = make_fleet(control, prefix, args.accounts, args.trades, symbols)
        print(
            f"set-up: {len(ids):,} accounts, {len(ids) * per_account:,} pending trades in {time.perf_counter() - t0:.0f} s"
        )
        egress.shared_budget().clear()
        egress.EXCHANGE_LIMITS.reset()

        rows = [baseline(control, sandbox.rest_url, ids, per_account)]
        control.reset_stats()
        clock = SimClock(control, sandbox.rest_url)
        with clock.installed():
            fleet = Fleet(clock, ids)
            with fleet.capturing_fan_out():
                steady_state(clock, ids)
                fleet.healthy, fleet.position_sync = True, not args.no_position_sync
                suffix = " (no position sync)" if args.no_position_sync else ""
                for name in args.scenarios.split(","):
                    fleet.queue.clear()
                    if name == "healthy":
                        rows.append(scenario(f"ours, streams healthy{suffix}", fleet, control, args.healthy_minutes))
                    elif name == "storm":
                        rows.append(storm(fleet, control, args.storm_minutes))
                    elif name == "unhealthy":
                        fleet.healthy = False
                        AccountSyncState.objects.filter(account_id__in=ids).update(stream_state="disconnected")
                        rows.append(
                            scenario(f"ours, streams unhealthy{suffix}", fleet, control, args.unhealthy_minutes)
                        )
                    else:
                        parser.error(f"--scenarios: healthy, storm or unhealthy, not {name!r}")
    print_table(rows, args, per_account)
    return rows


if __name__ == "__main__":
    main()
