"""`make run` smoke test: the whole stack (sandbox, worker, beat, user stream, admin, story) on the zero-setup
defaults in a temporary TRADEOPS_VAR_DIR on free ports; wait for the story (deadline), check every demo trade against
the exchange, stop it as Ctrl-C does, and check that no process is left behind. About 80 s: the story waits for
celery-beat's first periodic reconcile."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from sandbox.control import SandboxControl

REPO = Path(__file__).resolve().parent.parent
STORY_DEADLINE_SEC = 180
STOP_DEADLINE_SEC = 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("DATABASE_URL", "sqlite").split(":", 1)[0] not in ("sqlite", ""),
        reason="make run's smoke test runs in the zero-setup pass (SQLite + filesystem broker)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def identity(pid: int):
    """(pid, start time) — so a recycled pid is not mistaken for a survivor. None once gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else (pid, fields[19])


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_make_run_plays_the_story_and_stops_cleanly(tmp_path):
    var = tmp_path / "var"
    sandbox_port, web_port = free_port(), free_port()
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if name in os.environ}
    env |= {"TRADEOPS_VAR_DIR": str(var), "SANDBOX_PORT": str(sandbox_port), "WEB_PORT": str(web_port)}
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"VENV={sys.prefix}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail():
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])

    seen: set[int] = set()
    try:
        story_file = var / "demo-story.json"
        deadline = time.monotonic() + STORY_DEADLINE_SEC
        while not story_file.exists():
            assert proc.poll() is None, f"make run exited with {proc.returncode}:\n{log_tail()}"
            assert time.monotonic() < deadline, f"the story did not finish within {STORY_DEADLINE_SEC}s:\n{log_tail()}"
            seen |= descendants(proc.pid)
            time.sleep(0.5)
        time.sleep(0.5)  # the file is written in one go; let the story print its last lines
        story = json.loads(story_file.read_text())
        assert story["ok"], f"{story}\n{log_tail()}"
        assert [c["title"] for c in story["chapters"]] == [
            "a fill during a WebSocket gap",
            "a cancel that loses the race to a fill",
            "a partial fill, then the entry cancel",
            "a fill lost while the bot crashed",
        ]
        found_by = {c["title"]: c["found_by"] for c in story["chapters"]}
        # Neither the REST wait nor the stream saw that fill: only a reconcile can have found it (beat's, normally).
        assert found_by["a fill lost while the bot crashed"].startswith("reconcile"), found_by

        # Independently of the story: the database against the exchange, trade by trade.
        db = sqlite3.connect(var / "tradeops.sqlite3")
        api_key = db.execute("SELECT api_key FROM trades_account WHERE name = 'demo'").fetchone()[0]
        trades = db.execute(
            "SELECT t.symbol, t.client_order_id, t.status, t.filled_qty, t.entry_price FROM trades_trade t "
            "JOIN trades_account a ON a.id = t.account_id WHERE a.name = 'demo' ORDER BY t.id"
        ).fetchall()
        db.close()
        assert len(trades) == 4
        control = SandboxControl(f"http://127.0.0.1:{sandbox_port}")
        for symbol, client_order_id, status, filled_qty, entry_price in trades:
            order = control.get_order(api_key, symbol, client_order_id=client_order_id)
            assert status == "open", (symbol, status, order["status"])
            assert Decimal(str(filled_qty)) == Decimal(order["executedQty"]) > 0, (symbol, filled_qty, order)
            assert Decimal(str(entry_price)) == Decimal(order["avgPrice"]), (symbol, entry_price, order)

        assert "password:" in log_path.read_text(errors="replace")  # the dev admin's credentials were printed
        status, body = get(f"http://127.0.0.1:{web_port}/health/")
        assert status == 200, body
        assert get(f"http://127.0.0.1:{web_port}/admin/login/")[0] == 200
        assert "tradeops_reconcile_runs_total" in get(f"http://127.0.0.1:{web_port}/metrics")[1]
        seen |= descendants(proc.pid)
    finally:
        survivors_before = {identity(pid) for pid in seen} - {None}
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(STOP_DEADLINE_SEC)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"make run did not stop within {STOP_DEADLINE_SEC}s of SIGINT:\n{log_tail()}")
        deadline = time.monotonic() + 10
        while True:
            left = {identity(pid) for pid in seen} & survivors_before
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for pid, _ in left:
            os.kill(pid, signal.SIGKILL)
    assert len(survivors_before) >= 6, f"expected the stack's processes, saw {survivors_before}"
    assert not left, f"processes left behind after Ctrl-C: {sorted(left)}\n{log_tail()}"
