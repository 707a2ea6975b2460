"""Several `run_user_stream` processes sharing the accounts on the real stack (the sandbox, two Celery workers,
MariaDB, Redis): no account is ever streamed by two processes at once (sampled from the sandbox's live connections
throughout), a third process joining takes its share, and a SIGKILLed process's accounts stream again within
USER_STREAM_TAKEOVER_SEC (5 s here), with a fill made during the gap reconciled by the takeover's connect reconcile.
Which process holds an account is read from its StreamLease (holder = host:machine:pid:random) and proven with
`ss -tnp`. One process runs in its own pid namespace (`unshare --pid`), so its death is seen as a lost host's (its
leases expire); a process killed on the same machine is seen gone at once."""

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


def holders(accounts) -> dict[int, str]:
    """account pk → the holder (host:machine:pid:random) of its lease."""
    return dict(StreamLease.objects.filter(account__in=accounts).exclude(holder="").values_list("account_id", "holder"))


def pid_of(holder: str) -> int:
    return int(holder.rsplit(":", 2)[1])


def holder_of(accounts, pid: int) -> str | None:
    return next((h for h in holders(accounts).values() if pid_of(h) == pid), None)


def streaming(control, accounts) -> bool:
    return all(control.listen_keys(account.api_key)["connections"] == 1 for account in accounts)


def shared_by(control, accounts, count: int) -> bool:
    """Every account streamed once, by `count` holders, each holding its share (n // count or one more)."""
    held = holders(accounts)
    per_holder = [list(held.values()).count(h) for h in set(held.values())]
    return (
        len(held) == len(accounts)
        and len(per_holder) == count
        and max(per_holder) - min(per_holder) <= 1
        and streaming(control, accounts)
    )


def stream_sockets(pid: int) -> int:
    """Established TCP connections of the process (ss -tnp): its WebSockets and its pool's HTTP."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def another_machine() -> tuple[str, ...]:
    """A command prefix that runs a process in its own pid namespace: to the others it is on another machine (its
    pids mean nothing to them), so its death is noticed only by its leases expiring — a lost host."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid needs root: {probe.stderr.decode()[:200]}")
    return ("unshare", "--pid", "--fork", "--kill-child")


def kill_and_time_takeover(stack, control, name, orphaned) -> float:
    stack.kill(name)
    killed_at = time.monotonic()
    wait_for(
        lambda: streaming(control, orphaned),
        timeout=TAKEOVER + 10,
        interval=0.05,
        message=f"{name}'s accounts streaming again",
    )
    return time.monotonic() - killed_at


def test_stream_processes_share_rebalance_and_take_over_killed_ones_accounts(e2e):
    stack, control = e2e.stack, e2e.control
    prefix = another_machine()
    try:
        stack.start("stream2", "manage.py", "run_user_stream")
        accounts = [e2e.account() for _ in range(ACCOUNTS)]
        with ConnectionSampler(control, accounts) as sampler:
            wait_for(lambda: shared_by(control, accounts, 2), message="shared 3/3 by two processes")
            first, second = (
                holder_of(accounts, stack.procs["stream"].pid),
                holder_of(accounts, stack.procs["stream2"].pid),
            )
            assert first and second
            assert stream_sockets(pid_of(first)) >= 3 and stream_sockets(pid_of(second)) >= 3

            # A third process joins, "on another machine": each ends up with two (never more than ⌈6/3⌉ + 1).
            stack.start("stream3", "manage.py", "run_user_stream", prefix=prefix)
            wait_for(lambda: shared_by(control, accounts, 3), message="rebalanced over three")
            [third] = set(holders(accounts).values()) - {first, second}
            assert (
                max(list(holders(accounts).values()).count(h) for h in (first, second, third))
                <= math.ceil(ACCOUNTS / 3) + 1
            )

            # SIGKILL the third (a lost host: only its leases expiring tell): its accounts stream again within the
            # takeover time, and a fill made in the gap is reconciled on takeover.
            orphaned = [a for a in accounts if holders([a]).get(a.pk) == third]
            cid = f"e2e-{uuid.uuid4().hex[:20]}"
            tasks.open_position.delay(
                orphaned[0].pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=FAR, client_order_id=cid
            )
            trade = wait_for(
                lambda: Trade.objects.filter(client_order_id=cid, exchange_status="NEW").first(), message="order placed"
            )
            stack.kill("stream3")
            killed_at = time.monotonic()
            wait_for(
                lambda: all(control.listen_keys(a.api_key)["connections"] == 0 for a in orphaned),
                timeout=5,
                message="the killed process's sockets are gone",
            )
            control.fill_order(orphaned[0].api_key, trade.symbol, client_order_id=cid)
            wait_for(
                lambda: streaming(control, orphaned),
                timeout=TAKEOVER + 10,
                interval=0.05,
                message="orphaned accounts streaming again",
            )
            lost_host = time.monotonic() - killed_at
            assert lost_host <= TAKEOVER, f"takeover took {lost_host:.1f}s"
            wait_for(lambda: shared_by(control, accounts, 2), message="shared 3/3 again")
            wait_for(lambda: Trade.objects.get(pk=trade.pk).status == Trade.Status.OPEN, message="gap fill applied")
            assert (
                ReconcileRun.objects.filter(
                    account=orphaned[0], reason="ws_connect", kind=ReconcileRun.Kind.PENDING
                ).count()
                >= 2
            )

            # SIGKILL the second, on this machine: the first sees its pid gone and takes over at once.
            orphaned = [a for a in accounts if holders([a]).get(a.pk) == second]
            same_host = kill_and_time_takeover(stack, control, "stream2", orphaned)
            assert same_host <= TAKEOVER, f"takeover took {same_host:.1f}s"
            wait_for(lambda: shared_by(control, accounts, 1), message="all on the first")
            print(f"takeover after SIGKILL: lost host {lost_host:.2f}s, same host {same_host:.2f}s")
        assert sampler.samples > 20
        assert max(sampler.most.values()) <= 1, f"an account was streamed twice at once: {sampler.most}"
    finally:
        stack.stop("stream2")
        stack.stop("stream3")
