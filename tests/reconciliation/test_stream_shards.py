"""Stream processes sharing the accounts through leases (reconciliation/stream/shards.py): two or three runners
in-process, each on its own loop, against the sandbox's WebSocket and the test database. Clocks are compressed:
USER_STREAM_TAKEOVER_SEC 1.5 s (leases of 0.5 s renewed every 0.15 s)."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import timedelta
from itertools import pairwise

import pytest

from reconciliation.models import StreamLease, StreamProcess
from reconciliation.stream import shards
from reconciliation.stream.connection import AccountStream
from tests.factories import AccountFactory
from trades.db import db_now
from trades.models import Trade

from .stream_helpers import Recorder, StreamThread, place_trade, status_of, wait_for

live = pytest.mark.django_db(transaction=True)

TAKEOVER = 1.5
SHARDED = dict(takeover_sec=TAKEOVER, connects_per_sec=0)


class ConnectionSampler:
    """Samples the sandbox's live connections per account in a thread, until stopped: the most seen at once."""

    def __init__(self, exchange, accounts) -> None:
        self.exchange, self.accounts = exchange, list(accounts)
        self.most = {account.pk: 0 for account in self.accounts}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for account in self.accounts:
                seen = self.exchange.control.listen_keys(account.api_key)["connections"]
                self.most[account.pk] = max(self.most[account.pk], seen)
            self.samples += 1

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def assert_never_twice(self) -> None:
        assert self.samples > 10
        assert max(self.most.values()) <= 1, f"an account was streamed twice at once: {self.most}"


@pytest.fixture
def runners(binance):
    started = []

    def start(recorder=None, **config):
        thread = StreamThread(recorder or Recorder(), **{**SHARDED, **config}).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        if thread.thread.is_alive():
            thread.stop()


def connections(exchange, account) -> int:
    return exchange.control.listen_keys(account.api_key)["connections"]


def streaming(exchange, accounts) -> bool:
    return all(connections(exchange, account) == 1 for account in accounts)


def crash(thread: StreamThread, monkeypatch) -> None:
    """Stop a runner the way a SIGKILL would leave the database: its leases and its process row stay behind until
    they expire (its sockets do close here; the end-to-end test kills a real process)."""
    monkeypatch.setattr(shards, "leave", lambda holder: None)
    thread.stop()
    monkeypatch.undo()


# --- the lease rules, on the database ---------------------------------------------------------------------------


def test_shares_add_up_to_the_accounts_and_differ_by_at_most_one():
    for processes in range(1, 6):
        live_holders = [f"p{i}" for i in range(processes)]
        for accounts in range(0, 13):
            shares = [shards.share_of(holder, live_holders, accounts) for holder in live_holders]
            assert sum(shares) == accounts
            assert max(shares) - min(shares) <= 1
            assert max(shares) <= math.ceil(accounts / processes)


@pytest.mark.django_db
def test_a_lease_is_claimed_by_one_holder_until_it_expires_on_the_database_clock(monkeypatch):
    accounts = [AccountFactory().pk for _ in range(3)]
    assert sorted(shards.claim("x", accounts, 5, 60)) == sorted(accounts)
    assert shards.claim("y", accounts, 5, 60) == []
    # y's host clock runs an hour ahead: the leases are still live by the database's clock.
    monkeypatch.setattr(shards, "db_now", lambda: db_now() + timedelta(hours=1))
    assert shards.claim("y", accounts, 5, 60) == []
    StreamLease.objects.filter(account_id=accounts[0]).update(expires_at=db_now() - timedelta(seconds=1))
    assert shards.claim("y", accounts, 5, 60) == [accounts[0]]
    assert shards.renew("x", 60) == set(accounts[1:])  # x lost it: its renewal does not touch y's lease


@pytest.mark.django_db
def test_a_process_counts_only_the_live_processes_and_leaving_frees_its_leases_at_once():
    accounts = [AccountFactory().pk for _ in range(4)]
    StreamProcess.objects.create(holder="dead", expires_at=db_now() - timedelta(seconds=1))
    plan = shards.coordinate("a", set(accounts), lease_sec=60, stale_sec=1)
    assert plan.processes == 1 and plan.share == 4 and plan.held == set(accounts)
    shards.heartbeat("b", 60)
    plan = shards.coordinate("a", set(accounts), lease_sec=60, stale_sec=1)
    assert plan.share == 2 and len(plan.surplus) == 2 and len(plan.held) == 2
    shards.release("a", plan.surplus)
    assert len(shards.coordinate("b", set(accounts), lease_sec=60, stale_sec=1).claimed) == 2
    shards.leave("b")
    assert not StreamProcess.objects.filter(holder="b").exists()
    assert shards.coordinate("a", set(accounts), lease_sec=60, stale_sec=1).held == set(accounts)


# --- runners ----------------------------------------------------------------------------------------------------


@live
def test_two_runners_share_the_accounts_and_never_stream_one_twice(binance, make_account, runners):
    accounts = [make_account() for _ in range(5)]
    with ConnectionSampler(binance, accounts) as sampler:
        first, second = runners(), runners()
        # The first may take all five before the second registers; then it hands two or three over.
        wait_for(
            lambda: (
                streaming(binance, accounts) and sorted([len(first.runner.held), len(second.runner.held)]) == [2, 3]
            ),
            timeout=15,
            what="every account streamed once, shared 2/3",
        )
        assert first.runner.held.isdisjoint(second.runner.held)
        wait_for(lambda: sampler.samples > 50, timeout=10, what="samples")
    sampler.assert_never_twice()


@live
@pytest.mark.slow  # a runner killed, its accounts taken over after the takeover time, in real time
def test_a_crashed_runners_accounts_are_taken_over_and_reconciled_within_the_takeover_time(
    binance, make_account, runners, monkeypatch
):
    accounts = [make_account() for _ in range(4)]
    recorder = Recorder()
    survivor, doomed = runners(recorder), runners(recorder)
    wait_for(
        lambda: streaming(binance, accounts) and len(survivor.runner.held) == len(doomed.runner.held) == 2,
        timeout=15,
        what="two accounts each",
    )
    orphaned = [account for account in accounts if account.pk in doomed.runner.held]
    gap_trade = place_trade(orphaned[0])
    with ConnectionSampler(binance, accounts) as sampler:
        crash(doomed, monkeypatch)
        crashed_at = time.monotonic()
        binance.control.fill_order(orphaned[0].api_key, gap_trade.symbol, client_order_id=gap_trade.client_order_id)
        wait_for(
            lambda: survivor.runner.held == {account.pk for account in accounts}, timeout=TAKEOVER + 1, what="takeover"
        )
        assert time.monotonic() - crashed_at <= TAKEOVER
        wait_for(lambda: streaming(binance, accounts), timeout=10, what="every account streaming again")
    sampler.assert_never_twice()
    for account in orphaned:  # the takeover's connect reconcile
        wait_for(lambda account=account: recorder.count("reconcile", account.pk, "ws_connect") >= 2, what="reconcile")
    wait_for(lambda: status_of(gap_trade) == Trade.Status.OPEN, what="the fill made during the gap")


@live
def test_a_runner_joining_takes_its_share_and_one_leaving_hands_its_accounts_back_at_once(
    binance, make_account, runners
):
    accounts = [make_account() for _ in range(4)]
    with ConnectionSampler(binance, accounts) as sampler:
        first = runners()
        wait_for(lambda: streaming(binance, accounts) and len(first.runner.held) == 4, timeout=15, what="all on one")
        second = runners()
        wait_for(
            lambda: len(first.runner.held) == len(second.runner.held) == 2 and streaming(binance, accounts),
            timeout=15,
            what="rebalanced",
        )
        third = runners()
        wait_for(
            lambda: (
                sorted(len(t.runner.held) for t in (first, second, third)) == [1, 1, 2] and streaming(binance, accounts)
            ),
            timeout=15,
            what="rebalanced over three",
        )
        assert max(len(t.runner.held) for t in (first, second, third)) <= math.ceil(4 / 3) + 1
        second.stop()  # a clean exit releases its leases: no waiting for them to expire
        third.stop()
        left_at = time.monotonic()
        wait_for(lambda: len(first.runner.held) == 4, timeout=TAKEOVER, what="handed back")
        assert time.monotonic() - left_at < first.runner.config.lease_sec + first.runner.config.renew_sec
        wait_for(lambda: streaming(binance, accounts), timeout=10, what="streaming on one")
    sampler.assert_never_twice()


@live
@pytest.mark.slow  # waits out another holder's 3 s lease in real time
def test_a_lost_lease_closes_the_socket_and_it_is_not_reopened_while_another_holds_it(
    binance, make_account, runners, caplog
):
    account = make_account()
    thread = runners()
    thread.wait_connected(account.pk)
    caplog.set_level(logging.WARNING, logger="reconciliation.user_stream")
    StreamLease.objects.filter(account=account).update(holder="elsewhere", expires_at=db_now() + timedelta(seconds=3))
    wait_for(
        lambda: connections(binance, account) == 0 and account.pk not in thread.runner.streams, timeout=2, what="closed"
    )
    assert "event=lease_lost" in caplog.text
    passes = thread.runner.refreshes
    wait_for(lambda: thread.runner.refreshes >= passes + 3, timeout=5, what="three more passes")
    assert connections(binance, account) == 0 and account.pk not in thread.runner.held
    # The other holder's lease expires: the account is claimed again and reconnected.
    wait_for(lambda: connections(binance, account) == 1, timeout=10, what="reclaimed")


@live
def test_a_runner_that_cannot_renew_closes_every_socket_before_its_leases_expire(
    binance, make_account, runners, monkeypatch, caplog
):
    accounts = [make_account() for _ in range(2)]
    thread = runners()
    wait_for(lambda: streaming(binance, accounts), timeout=10, what="streaming")
    caplog.set_level(logging.ERROR, logger="reconciliation.user_stream")

    def database_away(*args, **kwargs):
        raise shards.IntegrityError("the database is away")  # any error: the pass fails

    real = shards.coordinate
    monkeypatch.setattr(shards, "coordinate", database_away)
    failed_at = time.monotonic()
    wait_for(lambda: all(connections(binance, account) == 0 for account in accounts), timeout=5, what="closed")
    assert time.monotonic() - failed_at < thread.runner.config.lease_sec + 0.5
    assert "event=leases_unconfirmed" in caplog.text
    monkeypatch.setattr(shards, "coordinate", real)
    wait_for(lambda: streaming(binance, accounts), timeout=10, what="streaming again")


@live
def test_new_connections_are_ramped(binance, make_account, runners, monkeypatch):
    accounts = [make_account() for _ in range(4)]
    started: list[float] = []
    real_run = AccountStream.run

    async def run(self):
        started.append(time.monotonic())
        await real_run(self)

    monkeypatch.setattr(AccountStream, "run", run)
    runners(connects_per_sec=4)
    wait_for(lambda: streaming(binance, accounts), timeout=10, what="streaming")
    gaps = [b - a for a, b in pairwise(sorted(started))]
    assert len(started) == 4 and min(gaps) >= 0.25 - 0.02, gaps


@pytest.mark.django_db
def test_a_holder_gone_from_this_machine_is_expired_at_once_and_others_are_left_to_expire():
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists (not reused within the test)
    me = shards.new_holder()
    host, machine, _, _ = me.split(":")
    dead_here = f"{host}:{machine}:{gone.pid}:deadbeef"
    alive_here = f"{host}:{machine}:{os.getpid()}:cafecafe"  # this very process: alive
    elsewhere = f"otherhost:0123456789ab:{gone.pid}:deadbeef"  # another machine: its pids mean nothing here
    accounts = [AccountFactory().pk for _ in range(3)]
    for holder, pk in zip((dead_here, alive_here, elsewhere), accounts, strict=True):
        shards.heartbeat(holder, 60)
        assert shards.claim(holder, [pk], 1, 60) == [pk]

    plan = shards.coordinate(me, set(accounts), lease_sec=60, stale_sec=60)

    assert plan.dead == [dead_here]
    assert plan.held == {accounts[0]}  # taken at once; the other two stay with their holders until they expire
    assert not StreamProcess.objects.filter(holder=dead_here).exists()
    assert plan.processes == 3
