"""Stream processes sharing accounts, and a SIGKILLed one's accounts taken over.

    .venv/bin/python bench/streams.py --database-url mysql://… [--accounts 1000] [--processes 4] [--takeover 30]
                                      [--lost-host]

N accounts on the sandbox, P `manage.py run_user_stream` processes on one database. Measured: the time until every
account streams (the start ramp, USER_STREAM_CONNECTS_PER_SEC per process), the accounts per process, then one
process SIGKILLed: the time until its accounts stream again. With --lost-host every process runs in its own pid
namespace (unshare, root), so a death is seen only by its leases expiring, as for a lost host; without it the others
see the pid gone at once. Throughout, a thread sweeps the sandbox's live connections of every account: the most seen
for one account at once must be 1 (no account streamed by two processes).

The database must be MariaDB/MySQL (several processes write to it); it is migrated and its accounts, trades and
stream leases are deleted first: give the bench its own database.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.testing import running_sandbox

# One key for every run: the accounts of an earlier run must stay readable to be deleted.
BENCH_KEY = base64.urlsafe_b64encode(b"bench/streams.py: not a secret..").decode()


def setup_django(tmp: str, database_url: str, sandbox) -> dict:
    env = {
        "DJANGO_SETTINGS_MODULE": "tradeops.settings",
        "DJANGO_SECRET_KEY": uuid.uuid4().hex,
        "FIELD_ENCRYPTION_KEY": BENCH_KEY,
        "TRADEOPS_VAR_DIR": tmp,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": "memory://",
        "BINANCE_FUTURES_REST_URL": sandbox.rest_url,
        "BINANCE_FUTURES_WS_URL": sandbox.ws_url,
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from reconciliation.models import StreamLease, StreamProcess
    from trades.models import Account

    StreamLease.objects.all().delete()
    StreamProcess.objects.all().delete()
    Account.objects.all().delete()
    return env


class Sweeper:
    """Sweeps every account's live connections on the sandbox; keeps the most seen at once and the last sweep."""

    def __init__(self, control, accounts):
        self.control, self.accounts = control, accounts
        self.most = {a.pk: 0 for a in accounts}
        self.last = {a.pk: 0 for a in accounts}
        self.sweeps = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for account in self.accounts:
                seen = self.control.listen_keys(account.api_key)["connections"]
                self.last[account.pk] = seen
                self.most[account.pk] = max(self.most[account.pk], seen)
            self.sweeps += 1


def holders(accounts) -> dict[int, str]:
    from reconciliation.models import StreamLease

    return dict(StreamLease.objects.filter(account__in=accounts).exclude(holder="").values_list("account_id", "holder"))


def wait_until(predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval)
    return time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--takeover", type=float, default=30)
    parser.add_argument("--connects-per-sec", type=float, default=5)
    parser.add_argument("--lost-host", action="store_true")
    args = parser.parse_args()
    prefix = ["unshare", "--pid", "--fork", "--kill-child"] if args.lost_host else []

    with tempfile.TemporaryDirectory() as tmp, running_sandbox() as sandbox:
        env = setup_django(tmp, args.database_url, sandbox)
        env.update(
            {
                "USER_STREAM_TAKEOVER_SEC": str(args.takeover),
                "USER_STREAM_CONNECTS_PER_SEC": str(args.connects_per_sec),
                "USER_STREAM_ACCOUNT_REFRESH_SEC": "5",
            }
        )
        from trades.models import Account

        accounts = []
        for i in range(args.accounts):
            creds = sandbox.control.create_account()
            accounts.append(
                Account.objects.create(name=f"bench-{i}", api_key=creds["api_key"], api_secret=creds["api_secret"])
            )
        sweeper = Sweeper(sandbox.control, accounts)
        sweeper.thread.start()
        procs, logs = [], [Path(tmp) / f"stream{i}.log" for i in range(args.processes)]
        env["LOG_LEVEL"] = "INFO"  # the holder line names each process's holder id
        started = time.monotonic()
        for path in logs:
            with open(path, "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [*prefix, sys.executable, "manage.py", "run_user_stream"],
                        cwd=ROOT,
                        env={**os.environ, **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        try:
            limit = 120 + args.accounts / max(args.connects_per_sec, 0.1)
            all_up = wait_until(
                lambda: (
                    sweeper.sweeps
                    and all(v == 1 for v in sweeper.last.values())
                    and len(set(holders(accounts).values())) == args.processes
                ),
                limit,
            )
            time.sleep(2 * args.takeover / 10)  # a few lease renewals in the steady state (sampled meanwhile)
            held = holders(accounts)
            per_holder = sorted(list(held.values()).count(h) for h in set(held.values()))
            victim_holder = max(set(held.values()), key=lambda h: list(held.values()).count(h))
            orphaned = [pk for pk, h in held.items() if h == victim_holder]
            victim = next(
                proc for proc, log in zip(procs, logs, strict=True) if f"holder={victim_holder} " in log.read_text()
            )
            os.killpg(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            victim.wait()  # reaped, as systemd would: a zombie's pid still exists
            sweep_at_kill = sweeper.sweeps
            back = wait_until(
                lambda: sweeper.sweeps > sweep_at_kill + 1 and all(sweeper.last[pk] == 1 for pk in orphaned),
                300,
                interval=0.05,
            )
        finally:
            sweeper.stop.set()
            sweeper.thread.join(30)
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
        twice = sum(1 for v in sweeper.most.values() if v > 1)
        print(
            f"accounts {args.accounts}, processes {args.processes}, USER_STREAM_TAKEOVER_SEC {args.takeover:g}, "
            f"USER_STREAM_CONNECTS_PER_SEC {args.connects_per_sec:g}, "
            f"{'lost host (own pid namespaces)' if args.lost_host else 'same machine'}"
        )
        print(f"every account streaming after start: {all_up - started:.1f} s; accounts per process {per_holder}")
        print(f"SIGKILL of a process holding {len(orphaned)}: its accounts streaming again after {back - killed:.1f} s")
        print(f"sandbox sweeps {sweeper.sweeps}; accounts ever seen with two connections at once: {twice}")
        return 0 if twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
