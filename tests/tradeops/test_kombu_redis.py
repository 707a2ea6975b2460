"""tradeops.kombu_redis: a real worker holding a countdown (an ETA message, unacknowledged) survives a Redis restart
that outlasts redis-py's own reconnect retries, and consumes again afterwards. On kombu's transport as released the
worker exits with AttributeError ('NoneType' object has no attribute 'hostname') while it tears the connection down.

A private redis-server on a free port (never the shared one), a real `celery worker` process with this repository's
settings, Celery's built-in `celery.accumulate` as the task (no database needed). The full stack's version of this
is docs/DESIGN.md "Faults around the stack" F31 (tests/e2e/test_broker_restart.py)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from kombu import Connection

from tests.helpers import wait_for
from tradeops.celery import app

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,  # a Redis server and a worker process, restarted: ~10 s
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server on PATH"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, data_dir: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), message=f"redis-server on {port}")
    return proc


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_a_worker_holding_a_countdown_survives_a_redis_restart_and_consumes_again(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, tmp_path, tmp_path / "redis.log")
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tradeops.settings_test",
        "CELERY_BROKER_URL": url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        "TRADEOPS_VAR_DIR": str(tmp_path / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tradeops",
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def text():  # the worker's log, read afresh each poll
        return log.read_text(errors="replace")

    try:
        wait_for(lambda: "ready." in text(), timeout=60, message="worker ready")
        with Connection(url) as conn:  # kombu's own transport: the test process may be set up for another broker
            app.send_task("celery.accumulate", args=("held",), countdown=300, connection=conn)
        wait_for(lambda: redis.Redis(port=port).hlen("unacked"), message="the worker holds the countdown, unacked")

        mark = len(text())
        redis.Redis(port=port).shutdown(nosave=True)
        server.wait(timeout=15)
        # Down until the worker has torn its connection down and failed to reconnect (or died doing so).
        wait_for(
            lambda: worker.poll() is not None or "Cannot connect to" in text()[mark:],
            message="the worker noticed Redis was gone",
        )
        server = start_redis(port, tmp_path, tmp_path / "redis.log")

        wait_for(
            lambda: worker.poll() is not None or "Connected to" in text()[mark:],
            timeout=30,
            message="the worker reconnected (or died)",
        )
        assert worker.poll() is None, f"the worker died:\n{text()[-3000:]}"
        with Connection(url) as conn:
            app.send_task("celery.accumulate", args=("after the restart",), connection=conn)
        wait_for(lambda: "succeeded" in text()[mark:], timeout=30, message="a task sent after the restart ran")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        server.terminate()
        server.wait(timeout=15)
