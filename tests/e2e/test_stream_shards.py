"""Several `run_user_stream` processes sharing the accounts on the real stack (the sandbox, two Celery workers,
MariaDB, Redis): no account is ever streamed by two processes at once (sampled from the sandbox's live connections
throughout), a third process joining takes its share, and a SIGKILLed process's accounts stream again within
USER_STREAM_TAKEOVER_SEC (5 s here), with a fill made during the gap reconciled by the takeover's connect reconcile.
Which process holds an account is read from its StreamLease (holder = host:pid:random) and proven with `ss -tnp`."""

import math
import subprocess
import threading
import time
import uuid

import pytest

from reconciliation import tasks
from reconciliation.models import ReconcileRun, StreamLease
from trades.models import Trade

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TAKEOVER = 5
STACK_ENV = {"USER_STREAM_TAKEOVER_SEC": str(TAKEOVER)}
ACCOUNTS = 6
FAR = 600  # an entry timeout that does not fire during the test


class ConnectionSampler:
    """The most live connections the sandbox reported per account, sampled in a thread until stopped."""

    def __init__(self, control, accounts):
        self.control, self.accounts = control, accounts
        self.most = {account.pk: 0 for account in accounts}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for account in self.accounts:
                seen = self.control.listen_keys(account.api_key)["connections"]
                self.most[account.pk] = max(self.most[account.pk], seen)
            self.samples += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def holders(accounts) -> dict[int, int]:
    """account pk → the pid of the stream process holding its live lease."""
    rows = StreamLease.objects.filter(account__in=accounts).exclude(holder="").values_list("account_id", "holder")
    return {pk: int(holder.rsplit(":", 2)[1]) for pk, holder in rows}


def streaming(control, accounts) -> bool:
    return all(control.listen_keys(account.api_key)["connections"] == 1 for account in accounts)


def shared_by(control, accounts, pids) -> bool:
    """Every account streamed once, by one of `pids`, each holding its share (n // p or one more)."""
    held = holders(accounts)
    if len(held) != len(accounts) or set(held.values()) != set(pids):
        return False
    counts = [list(held.values()).count(pid) for pid in pids]
    return max(counts) - min(counts) <= 1 and streaming(control, accounts)


def stream_sockets(pid: int) -> int:
    """Established TCP connections of the process (ss -tnp): its WebSockets and its pool's HTTP."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def test_stream_processes_share_rebalance_and_take_over_a_killed_ones_accounts(e2e):
    stack, control = e2e.stack, e2e.control
    try:
        stack.start("stream2", "manage.py", "run_user_stream")
        accounts = [e2e.account() for _ in range(ACCOUNTS)]
        first, second = stack.procs["stream"].pid, stack.procs["stream2"].pid
        with ConnectionSampler(control, accounts) as sampler:
            wait_for(lambda: shared_by(control, accounts, {first, second}), message="shared 3/3 by two processes")
            assert stream_sockets(first) >= 3 and stream_sockets(second) >= 3

            # A third process joins: each ends up with two (never more than ⌈6/3⌉ + 1 on the way).
            stack.start("stream3", "manage.py", "run_user_stream")
            third = stack.procs["stream3"].pid
            wait_for(lambda: shared_by(control, accounts, {first, second, third}), message="rebalanced over three")
            assert max(list(holders(accounts).values()).count(pid) for pid in (first, second, third)) \
                <= math.ceil(ACCOUNTS / 3) + 1

            # SIGKILL the third: its accounts stream again within the takeover time, and a fill made in the gap
            # is reconciled on takeover.
            orphaned = [account for account in accounts if holders([account]).get(account.pk) == third]
            cid = f"e2e-{uuid.uuid4().hex[:20]}"
            tasks.open_position.delay(orphaned[0].pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=FAR,
                                      client_order_id=cid)
            trade = wait_for(lambda: Trade.objects.filter(client_order_id=cid, exchange_status="NEW").first(),
                             message="order placed")
            stack.kill("stream3")
            killed_at = time.monotonic()
            wait_for(lambda: all(control.listen_keys(a.api_key)["connections"] == 0 for a in orphaned), timeout=5,
                     message="the killed process's sockets are gone")
            control.fill_order(orphaned[0].api_key, trade.symbol, client_order_id=cid)
            gap_at = time.monotonic()
            wait_for(lambda: streaming(control, orphaned), timeout=TAKEOVER + 10, interval=0.05,
                     message="orphaned accounts streaming again")
            took = time.monotonic() - killed_at
            assert took <= TAKEOVER, f"takeover took {took:.1f}s"
            wait_for(lambda: shared_by(control, accounts, {first, second}), message="shared 3/3 again")
            wait_for(lambda: Trade.objects.get(pk=trade.pk).status == Trade.Status.OPEN, message="gap fill applied")
            assert ReconcileRun.objects.filter(account=orphaned[0], reason="ws_connect",
                                               kind=ReconcileRun.Kind.PENDING).count() >= 2
            print(f"takeover after SIGKILL: {took:.2f}s (fill made {gap_at - killed_at:.2f}s after the kill)")
        assert sampler.samples > 20
        assert max(sampler.most.values()) <= 1, f"an account was streamed twice at once: {sampler.most}"
    finally:
        stack.stop("stream2")
        stack.stop("stream3")
