"""docs/DESIGN.md "Faults around the stack" F31: Redis restarted while the workers hold an entry-timeout countdown (an ETA task, unacked).

The module runs its own stack on a private redis-server (a free port, its own data directory), so restarting
Redis touches no one else's broker: the workers, the user stream and beat get its URL, the test process sends its
tasks over explicit connections to it and pings the workers through the celery CLI run with the stack's environment.
The restart is a clean one (SHUTDOWN SAVE, then the same server again, with its data), and Redis stays down until
every worker has noticed; the case docs/DESIGN.md "Faults around the stack" F32 (data lost) is left to its own row.

The visibility timeout here is 120 s, as in production far longer than the entry wait: Redis hands a lost
countdown out again only after it, so the entry timeout can meet its deadline + 30 s only from the trade's deadline
in the database (`cancel_overdue_entries`, swept by beat), not from the broker.
"""

import base64
import importlib
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest
import redis as redis_lib
from django.apps import apps
from django_celery_beat.models import PeriodicTask

from reconciliation import tasks
from reconciliation.models import ReconcileRun
from tradeops.celery import app
from trades.models import Trade

from .conftest import _e2e_reason
from .harness import ROOT, Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SWEEP_TASK = "reconciliation.tasks.cancel_overdue_entries"
ENTRY_TIMEOUT_SEC = 5
WORKERS = ("worker1", "worker2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this module's own: started, restarted (keeping its data) and stopped by the test."""

    def __init__(self, data_dir, log_path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--dbfilename",
            "dump.rdb",
        ]
        self.log_path = log_path
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            self.args, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self.ping, timeout=10, message=f"redis-server on {self.port} up")

    def ping(self) -> bool:
        result = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return result.stdout.strip() == "PONG"

    def restart(self, *, while_down=lambda: None):
        """SHUTDOWN SAVE (a clean stop that writes the data set, what a package upgrade or a reboot does), then,
        once `while_down()` has returned, the same server again on the same port, loading it back."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "save"], capture_output=True)
        self.proc.wait(timeout=15)
        while_down()
        self.start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def e2e_stack(sandbox_server, django_db_setup, tmp_path_factory):
    """This module's stack (it replaces conftest's): the same processes, on the private Redis."""
    reason = _e2e_reason() or (None if shutil.which("redis-server") else "needs redis-server on PATH")
    if reason:
        pytest.skip(reason)
    log_dir = tmp_path_factory.mktemp("e2e-broker-restart-logs")
    redis = PrivateRedis(tmp_path_factory.mktemp("redis-data"), log_dir / "redis.log")
    redis.start()
    stack = Stack(sandbox_server, log_dir)
    stack.env["CELERY_BROKER_URL"] = redis.url
    stack.env["CELERY_VISIBILITY_TIMEOUT"] = "120"
    stack.redis = redis
    try:
        for name in WORKERS:
            stack.start_worker(name)
        stack.start_stream()
        for name in WORKERS:
            wait_for(lambda name=name: "ready." in stack.log(name), timeout=60, message=f"{name} ready")
        yield stack
    finally:
        stack.stop_all()
        redis.stop()
        print(f"\ne2e process logs: {stack.log_dir}")


def broker(stack):
    """A connection to the module's Redis for the tasks the test process sends (`apply_async(connection=…)`)."""
    return app.connection_for_write(stack.redis.url)


def open_position(stack, account, *, timeout_sec):
    """The bot's flow: enqueue open_position; return the trade once its order rests on the exchange."""
    cid = f"e2e-{uuid.uuid4().hex[:20]}"
    with broker(stack) as conn:
        tasks.open_position.apply_async(
            (account.pk, "BTCUSDT", "BUY", "0.010", "50000"),
            {"timeout_sec": timeout_sec, "client_order_id": cid},
            connection=conn,
        )
    return wait_for(
        lambda: Trade.objects.filter(client_order_id=cid).exclude(exchange_status__in=["", "PLACING"]).first(),
        message=f"{cid} placed",
    )


def countdown_held(stack, trade) -> bool:
    """The trade's entry-timeout countdown is delivered to a worker and unacknowledged: in Redis' `unacked` hash
    (kombu's ack emulation), where it stays while the worker holds it as an ETA task."""
    for raw in redis_lib.Redis.from_url(stack.redis.url).hvals("unacked"):
        payload = json.loads(raw)[0]
        if payload["headers"].get("task") == "reconciliation.tasks.entry_timeout":
            args = json.loads(base64.b64decode(payload["body"]))[0]
            if args == [trade.pk]:
                return True
    return False


def answering(stack, name) -> bool:
    """The worker answers a ping over the broker (its control consumer is back). Asked by the celery CLI with the
    stack's environment: the test process's own control messages would go out through its default broker."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tradeops",
            "inspect",
            "ping",
            "--timeout",
            "2",
            "--destination",
            f"{name}@{socket.gethostname()}",
        ],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode == 0


def test_f31_redis_restarted_while_a_countdown_is_held_workers_keep_running_and_the_timeout_fires(e2e):
    stack = e2e.stack
    account = e2e.account()
    # The deadline sweep on its production schedule (every 15 s): the migration's, made again by the migration's own
    # code if an earlier transactional test flushed it.
    importlib.import_module("reconciliation.migrations.0008_cancel_overdue_schedule").create_schedule(apps, None)
    PeriodicTask.objects.filter(task=SWEEP_TASK).update(enabled=True)
    stack.start_beat()

    trade = open_position(stack, account, timeout_sec=ENTRY_TIMEOUT_SEC)  # nobody fills it
    deadline = time.monotonic() + ENTRY_TIMEOUT_SEC
    wait_for(lambda: countdown_held(stack, trade), message="a worker holds the entry-timeout countdown")
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.PENDING

    # Redis stays down until every worker has torn down its connection and failed to reconnect (or died): a restart
    # that outlasts redis-py's own reconnect retries, as one loading its data set does. A restart quicker than that
    # is hidden from the worker by redis-py, which reconnects under kombu's feet.
    marks = {name: len(stack.log(name)) for name in WORKERS}

    def torn_down(name):
        return stack.procs[name].poll() is not None or "Cannot connect to" in stack.log(name)[marks[name] :]

    connects = {name: stack.log(name).count("Connected to") for name in WORKERS}
    stack.redis.restart(
        while_down=lambda: wait_for(
            lambda: all(torn_down(name) for name in WORKERS), message="every worker lost its connection to Redis"
        )
    )

    # Each worker reconnects — or, before the fix, the one holding the countdown has exited on its way there.
    wait_for(
        lambda: all(
            stack.log(name).count("Connected to") > connects[name] or stack.procs[name].poll() is not None
            for name in WORKERS
        ),
        message="the workers reconnected (or died)",
    )
    stack.assert_alive(*WORKERS)
    for name in WORKERS:
        wait_for(lambda name=name: answering(stack, name), message=f"{name} answers a ping after the restart")
    with broker(stack) as conn:  # … and the task queue is consumed again
        tasks.reconcile_account.apply_async((account.pk,), {"reason": "after-redis-restart"}, connection=conn)
    wait_for(
        lambda: ReconcileRun.objects.filter(account=account, reason="after-redis-restart").exists(),
        message="a task sent after the restart ran",
    )

    # The countdown the worker held is gone with its connection (Celery drops the timer entries of a lost
    # connection); the message waits in Redis' unacked hash for the visibility timeout. Only the trade's deadline in
    # the database can cancel it in time.
    sweep = "enabled" if PeriodicTask.objects.filter(task=SWEEP_TASK, enabled=True).exists() else "missing"
    wait_for(
        lambda: Trade.objects.get(pk=trade.pk).status == Trade.Status.CANCELLED,
        timeout=max(deadline + 30 - time.monotonic(), 0.1),
        interval=0.2,
        message=f"the entry timeout cancelled it within its deadline + 30 s ({SWEEP_TASK}'s schedule: {sweep})",
    )
    assert Trade.objects.get(pk=trade.pk).exchange_status == "CANCELED"
    stack.assert_alive(*WORKERS)
    e2e.settle()
