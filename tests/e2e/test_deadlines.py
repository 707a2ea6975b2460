"""docs/DESIGN.md "Faults around the stack"'s deadline rows on the real stack: entry deadlines in the database (Trade.cancel_after, swept every 15 s),
cancels that ride out database outages, and a worker whose clock jumps.

This module runs its own stack (two Celery workers, and beat where a row needs it; no user stream: REST answers
carry every state these rows need) on its own broker, a private redis-server it can wipe, and reaches MariaDB
through a proxy it can cut (dbproxy.py). The test process keeps its own direct database connection for asserting,
and enqueues on the private broker (`enqueue`)."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from django.apps import apps
from django.db import connection
from django.db.models import Q
from django.test import override_settings
from django_celery_beat.models import PeriodicTask

from reconciliation import services, tasks
from reconciliation.models import ReconcileRun
from tests.factories import AccountFactory
from tradeops.celery import app
from trades.models import Trade, TradeEvent

from .conftest import NUMERIC, _e2e_reason
from .dbproxy import DbProxy
from .harness import ROOT, Stack, wait_for
from .invariants import assert_invariant, settled

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAR = 600  # an entry timeout that does not fire during the test
SWEEP = "cancel entries past their deadline"  # the migration's schedule (every 15 s)
# F35: a not-found window (Binance's -2013 right after placing) that a slow machine cannot miss, inside the grace.
GRACE_SEC, NOT_FOUND_WINDOW_MS = 8, 6000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of this module's own (no persistence), so "Redis loses its data" hurts nobody else."""

    def __init__(self, log_dir):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc = None

    def start(self) -> None:
        log = open(self.log_dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ping, timeout=20, message="private redis up")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def ping(self) -> bool:
        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def lose_data(self) -> None:
        """Redis restarts without its data (no persistence): queued and unacknowledged messages are gone."""
        try:
            self.client().shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes
        self.proc.wait(20)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class DeadlineStack(Stack):
    def __init__(self, exchange, log_dir, *, broker_url: str, database_url: str):
        super().__init__(exchange, log_dir)
        self.env.update(
            {
                "CELERY_BROKER_URL": broker_url,
                "DATABASE_URL": database_url,
                "PENDING_NOT_FOUND_GRACE_SEC": str(GRACE_SEC),
            }
        )
        self.workers = {"worker1": {}, "worker2": {}}
        self.readies: dict[str, int] = {}

    def start_worker(self, name: str, *, queues: str = "celery", clock: str | None = None) -> subprocess.Popen:
        """A worker; `clock`: its clock's offset under libfaketime (e.g. "+5m"), for this process only."""
        self.workers[name] = {"queues": queues, "clock": clock}
        log = open(self.log_dir / f"{name}.log", "ab")
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tradeops",
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            f"--hostname={name}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
            "-Q",
            queues,
        ]
        if clock:
            argv = ["faketime", "-f", clock, *argv]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def wait_ready(self, *names: str) -> None:
        for name in names:
            wait_for(
                lambda name=name: self.log(name).count("ready.") >= self.readies.get(name, 0) + 1,
                timeout=60,
                message=f"{name} ready",
            )
            self.readies[name] = self.log(name).count("ready.")

    def supervise(self) -> None:
        """What a process supervisor does: start again whatever worker or beat died (e.g. on a Redis restart)."""
        for name, options in self.workers.items():
            if name in self.procs and self.procs[name].poll() is not None:
                self.start_worker(name, **options)
        if "beat" in self.procs and self.procs["beat"].poll() is not None:
            self.start_beat()


@pytest.fixture(scope="module")
def deadline_stack(sandbox_server, django_db_setup, tmp_path_factory):
    reason = _e2e_reason()
    if reason:
        pytest.skip(reason)
    log_dir = tmp_path_factory.mktemp("e2e-deadline-logs")
    broker = PrivateRedis(log_dir)
    broker.start()
    db = connection.settings_dict
    proxy = DbProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 3306)).start()
    stack = DeadlineStack(
        sandbox_server,
        log_dir,
        broker_url=broker.url,
        database_url=f"mysql://{db['USER']}:{db['PASSWORD']}@{proxy.url_host}/{db['NAME']}",
    )
    stack.broker, stack.db = broker, proxy
    try:
        for name in ("worker1", "worker2"):
            stack.start_worker(name)
        stack.wait_ready("worker1", "worker2")
        yield stack
    finally:
        stack.stop_all()
        proxy.close()
        broker.stop()
        print(f"\ne2e deadline-module logs: {log_dir}")


class Deadlines:
    def __init__(self, stack, exchange):
        self.stack = stack
        self.control = exchange.control
        self.accounts = []

    def account(self):
        creds = self.control.create_account()
        account = AccountFactory(api_key=creds["api_key"], api_secret=creds["api_secret"])
        self.accounts.append(account)
        return account

    def enqueue(self, task, *args, queue: str | None = None, **kwargs) -> None:
        """Send a task on the module's private broker (the test process's app is configured for another)."""
        with app.connection_for_write(self.stack.broker.url) as conn:
            task.apply_async(args, kwargs, connection=conn, **({"queue": queue} if queue else {}))

    def open_position(self, account, *, timeout_sec=FAR, wait_placed=True):
        """The bot's flow (open_position); the trade once its order rests on the exchange."""
        cid = f"e2e-{uuid.uuid4().hex[:20]}"
        self.enqueue(
            tasks.open_position,
            account.pk,
            "BTCUSDT",
            "BUY",
            "0.010",
            "50000",
            timeout_sec=timeout_sec,
            client_order_id=cid,
        )
        if not wait_placed:
            return wait_for(lambda: Trade.objects.filter(client_order_id=cid).first(), message=f"{cid} created")
        return wait_for(
            lambda: Trade.objects.filter(client_order_id=cid, exchange_status="NEW").first(), message=f"{cid} placed"
        )

    def order(self, trade) -> dict:
        return self.control.get_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id)

    def cancelled_on_exchange(self, trade) -> bool:
        return self.order(trade)["status"] == "CANCELED"

    def start_sweep(self) -> None:
        """celery beat with the deadline sweep only, on its production schedule (every 15 s): the migration's, made
        again by the migration's own code if an earlier transactional test flushed it."""
        importlib.import_module("reconciliation.migrations.0008_cancel_overdue_schedule").create_schedule(apps, None)
        PeriodicTask.objects.filter(name=SWEEP).update(enabled=True)
        assert PeriodicTask.objects.get(name=SWEEP).interval.every == 15
        self.stack.start_beat()

    @contextmanager
    def database_down(self):
        self.stack.db.cut()
        try:
            yield
        finally:
            self.stack.db.restore()

    def hold(self, seconds: float) -> None:
        """Let the fault last `seconds` (its length is the scenario), watching that the workers stay up."""
        until = time.monotonic() + seconds
        wait_for(
            lambda: self.stack.assert_alive("worker1", "worker2") or time.monotonic() >= until,
            timeout=seconds + 5,
            interval=0.2,
            message=f"{seconds}s of the fault",
        )

    def settle(self, timeout=60):
        """docs/DESIGN.md "Fault matrix"'s invariant once the fault is over (as the fault matrix checks it)."""
        wait_for(lambda: settled(self.control, self.accounts), timeout=timeout, interval=0.3, message="quiescence")
        for account in self.accounts:
            wait_for(
                lambda account=account: not services.sync_positions_with_binance(account, reason="e2e")["skipped"],
                timeout=timeout,
                interval=0.3,
                message=f"a position sync of {account.name}",
            )
        assert_invariant(self.control, self.accounts)


@pytest.fixture
def dl(deadline_stack, binance, transactional_db):
    PeriodicTask.objects.update(enabled=False)  # only what a test starts runs
    with override_settings(**{**NUMERIC, "PENDING_NOT_FOUND_GRACE_SEC": GRACE_SEC}):
        yield Deadlines(deadline_stack, binance)
    deadline_stack.db.restore()
    deadline_stack.stop("beat")
    deadline_stack.stop("skewed")
    deadline_stack.workers.pop("skewed", None)
    binance.control.clear_faults()
    binance.control.set_not_found_window(0)
    if not deadline_stack.broker.ping():
        deadline_stack.broker.start()
    deadline_stack.supervise()


def test_f32_redis_loses_its_data_every_overdue_entry_is_cancelled_within_30s_of_its_deadline(dl):
    account = dl.account()
    dl.start_sweep()
    trades = [dl.open_position(account, timeout_sec=8) for _ in range(3)]
    broker = dl.stack.broker.client()
    wait_for(lambda: broker.hlen("unacked") >= 3, message="the workers hold the three entry-timeout countdowns")

    # The countdowns are gone: Redis' copies with its data, a worker's with its connection (it drops what it holds,
    # expecting Redis to hand it out again) or with the worker itself (kombu's restore of unacked messages can kill
    # it on a Redis restart; supervise() starts it again, as a process supervisor would).
    dl.stack.broker.lose_data()

    wait_for(
        lambda: dl.stack.supervise() or all(dl.cancelled_on_exchange(t) for t in trades),
        timeout=75,
        interval=0.5,
        message="every overdue entry cancelled",
    )
    for trade in trades:
        trade.refresh_from_db()
        cancelled_at = dl.order(trade)["updateTime"] / 1000
        assert cancelled_at <= (trade.cancel_after + timedelta(seconds=30)).timestamp(), trade
        assert trade.status == Trade.Status.CANCELLED
    dl.settle()


def test_f33_mariadb_down_when_the_entry_timeout_fires_the_order_is_cancelled_once_it_returns(dl):
    account = dl.account()
    timeout_sec = 5
    trade = dl.open_position(account, timeout_sec=timeout_sec)
    placed = time.monotonic()

    with dl.database_down():
        dl.hold(max(placed + timeout_sec + 4 - time.monotonic(), 0))  # the countdown fires into the outage
        assert dl.order(trade)["status"] == "NEW"

    wait_for(lambda: dl.cancelled_on_exchange(trade), timeout=30, message="cancelled once the database returned")
    wait_for(lambda: Trade.objects.get(pk=trade.pk).status == Trade.Status.CANCELLED, message="trade cancelled")
    dl.settle()


def test_f34_a_10s_database_outage_during_a_cancel_the_cancel_is_sent_once_it_returns(dl):
    account = dl.account()
    trade = dl.open_position(account)
    dl.control.reset_stats()

    with dl.database_down():
        dl.enqueue(tasks.cancel_and_verify, trade.pk)  # the operator's (or the bot's) cancel, into the outage
        dl.hold(10)
        assert dl.control.stats()["requests"].get("DELETE /fapi/v1/order", 0) == 0  # nothing reached Binance

    wait_for(lambda: dl.cancelled_on_exchange(trade), timeout=30, message="cancel sent once the database returned")
    wait_for(lambda: Trade.objects.get(pk=trade.pk).status == Trade.Status.CANCELLED, message="trade cancelled")
    assert not Trade.objects.get(pk=trade.pk).needs_operator
    dl.settle()


def test_f35_a_worker_clock_5_minutes_ahead_leaves_no_live_order_uncancelled(dl):
    """The worker whose clock runs 5 minutes ahead reconciles (its own queue, so it is that worker); the others place
    and time out. Binance answers -2013 for a fresh order (its eventual consistency) and the placement's answer was
    lost (503, executed): only the grace keeps the trade pending, and it must be measured on one clock."""
    dl.stack.start_worker("skewed", queues="skewed", clock="+5m")
    dl.stack.wait_ready("skewed")
    account = dl.account()
    dl.control.set_not_found_window(NOT_FOUND_WINDOW_MS)
    dl.control.inject_fault("/fapi/v1/order", "503_unknown_placed", count=1, method="POST")

    unknown = dl.open_position(account, timeout_sec=GRACE_SEC + 2, wait_placed=False)
    wait_for(lambda: Trade.objects.filter(pk=unknown.pk, placed_at__isnull=False).exists(), message="placement sent")
    # A second entry, newer, so the skewed worker looks it up first: a fresh client's first signed call from a clock
    # 5 minutes ahead meets -1021 and re-syncs, and the look-up of `unknown` then reaches Binance.
    other = dl.open_position(account, timeout_sec=GRACE_SEC + 2)
    dl.enqueue(tasks.reconcile_account, account.pk, reason="e2e", queue="skewed")
    saw_not_found = Q(report__not_found_in_grace__gte=1) | Q(report__failed__gte=1)
    wait_for(
        lambda: ReconcileRun.objects.filter(saw_not_found, account=account, reason="e2e").exists(),
        timeout=30,
        message="the skewed worker's reconcile met the -2013",
    )

    wait_for(
        lambda: all(dl.cancelled_on_exchange(t) for t in (unknown, other)), timeout=45, message="no live order left"
    )
    wait_for(lambda: Trade.objects.get(pk=unknown.pk).status == Trade.Status.CANCELLED, message="trade cancelled")
    assert not TradeEvent.objects.filter(trade=unknown, to_status=Trade.Status.FAILED).exists()  # the grace held
    dl.settle()
