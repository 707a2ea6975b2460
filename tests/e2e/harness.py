"""The whole stack as separate processes, for the end-to-end tests: the sandbox exchange, Celery workers, celery
beat and the user stream, on the test database (MariaDB) and the broker (Redis). Clocks are short (grace periods,
retry bases, account refresh) so the fault matrix runs in minutes, not hours."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import connection

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

# What the processes under test run with; the test process applies the same through override_settings.
FAST = {
    "PENDING_NOT_FOUND_GRACE_SEC": "3",
    "CANCEL_RETRY_BASE_SEC": "0.2",
    "CANCEL_VERIFY_MAX_TRIES": "3",
    "BINANCE_HTTP_TIMEOUT": "2",
    "RECONCILE_AUDIT_SEC": "4",  # a healthy stream's REST audit (600 s), compressed like the beat (1 s for 60 s)
    "USER_STREAM_ACCOUNT_REFRESH_SEC": "0.5",
    "USER_STREAM_BACKOFF_BASE_SEC": "0.2",
    "USER_STREAM_BACKOFF_MAX_SEC": "1",
    "USER_STREAM_POSITION_DEBOUNCE_SEC": "0.3",
    "CELERY_VISIBILITY_TIMEOUT": "20",  # a SIGKILLed worker's unacked task comes back after this
    "CELERY_UNACKED_RESTORE_SEC": "2",  # … at the next sweep
    # A killed task's account lease runs out after RECONCILE_LEASE_SEC (kept above the hard time limit, as in
    # production); its redelivery retries meanwhile (F11).
    "CELERY_TASK_SOFT_TIME_LIMIT": "15",
    "CELERY_TASK_TIME_LIMIT": "18",
    "RECONCILE_LEASE_SEC": "20",
    "DATABASE_LOCK_WAIT_TIMEOUT": "2",  # F10: a lock-wait timeout well inside the soft time limit
    "LOG_LEVEL": "INFO",
}


def database_url() -> str:
    """DATABASE_URL of the test database the test process is using, for the processes under test."""
    db = connection.settings_dict
    if connection.vendor == "mysql":
        return f"mysql://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


class Stack:
    def __init__(self, exchange, log_dir: Path, env: dict[str, str] | None = None):
        self.exchange = exchange
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            **FAST,
            "DJANGO_SETTINGS_MODULE": "tradeops.settings_test",
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "BINANCE_FUTURES_REST_URL": exchange.rest_url,
            "BINANCE_FUTURES_WS_URL": exchange.ws_url,
            "FIELD_ENCRYPTION_KEY": settings.FIELD_ENCRYPTION_KEY,
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),  # a test module's own settings (its STACK_ENV)
        }

    # --- processes -------------------------------------------------------------------------------------------
    def start(self, name: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [*prefix, sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str, clock_ahead_sec: float | None = None) -> subprocess.Popen:
        """A Celery worker; with clock_ahead_sec its clock runs that far ahead of the host's (libfaketime)."""
        prefix = ("faketime", "-f", f"+{clock_ahead_sec:g}s") if clock_ahead_sec else ()
        return self.start(
            name,
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
            prefix=prefix,
        )

    def start_beat(self) -> subprocess.Popen:
        return self.start(
            "beat",
            "-m",
            "celery",
            "-A",
            "tradeops",
            "beat",
            "--loglevel=INFO",
            f"--schedule={self.log_dir / 'beat-schedule'}",
            "--max-interval=1",
        )

    def start_stream(self) -> subprocess.Popen:
        return self.start("stream", "manage.py", "run_user_stream")

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: no shutdown, no acks, no listenKey close — a crash."""
        self.stop(name, signal.SIGKILL)

    def pool_children(self, name: str) -> list[int]:
        pid = self.procs[name].pid
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def assert_alive(self, *names: str) -> None:
        for name in names:
            proc = self.procs.get(name)
            assert proc is not None and proc.poll() is None, f"{name} died:\n{self.log(name)[-3000:]}"


# The stack is slower to settle than one process: a longer default deadline, a calmer poll.
wait_for = functools.partial(wait_for, timeout=30.0, interval=0.1)
