"""tradeops.respawn, the Procfile's supervision: a process that exits is started again (with backoff), a stop signal
stops it for good, and under honcho one process exiting no longer stops the others."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tradeops.respawn import backoff

REPO = Path(__file__).resolve().parents[2]
FAST = {"RESPAWN_BACKOFF_BASE_SEC": "0.05", "RESPAWN_BACKOFF_MAX_SEC": "0.2"}

# Appends its pid to a file (once ready for SIGTERM), then exits with 3 at once ("crash"), or waits for SIGTERM, notes
# it and exits with 0 ("serve"), or waits for SIGTERM and is killed by it ("die").
CHILD = """
import os, signal, sys
if sys.argv[2] != "die":
    signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1] + ".term", "w").close(), sys.exit(0)))
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
if sys.argv[2] == "crash":
    sys.exit(3)
while True:
    signal.pause()
"""


def runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def respawn(tmp_path, mode, **popen):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / f"{mode}.runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradeops.respawn", sys.executable, str(script), str(log), mode],
        cwd=REPO,
        env={**os.environ, **FAST},
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    return proc, log


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n, 1, 60) for n in (1, 2, 3, 4, 7, 8)] == [1, 2, 4, 8, 60, 60]


def test_a_process_that_exits_is_started_again_until_a_stop_signal(tmp_path):
    proc, log = respawn(tmp_path, "crash")
    try:
        wait_for(lambda: len(runs(log)) >= 3, message="started again after each exit")
        proc.send_signal(signal.SIGTERM)
        # The last exit code of the process: 3 when it crashed on its own, 0 when our SIGTERM reached it between
        # writing its pid and exiting (its handler exits 0), 143 when it reached a new one still starting up.
        code = proc.wait(timeout=10)
        assert code == (0 if Path(f"{log}.term").exists() else code) and code in (0, 3, 128 + signal.SIGTERM)
        assert "exited with 3; starting it again" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_a_stop_signal_goes_on_to_the_process_which_is_not_started_again(tmp_path):
    proc, log = respawn(tmp_path, "serve")
    try:
        wait_for(lambda: runs(log), message="the process started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert Path(f"{log}.term").exists()  # it got SIGTERM: a warm shutdown, not a kill
        assert len(runs(log)) == 1
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
@pytest.mark.slow  # honcho and its processes, one of them respawned
def test_under_honcho_one_process_exiting_leaves_the_others_running(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    crash, serve = tmp_path / "crash.runs", tmp_path / "serve.runs"
    wrapped = f"python -m tradeops.respawn {sys.executable} {script}"
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"crashes: {wrapped} {crash} crash\nserves: {wrapped} {serve} serve\n")
    env = {**os.environ, **FAST, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", str(procfile), "-d", str(REPO)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: runs(serve) and len(runs(crash)) >= 3,
            timeout=30,
            message="one process crashed (and was started again) three times",
        )
        assert honcho.poll() is None, honcho.stdout.read()
        [pid] = runs(serve)
        os.kill(int(pid), 0)  # the other one still runs, never restarted
        os.killpg(honcho.pid, signal.SIGINT)  # Ctrl-C: everything stops, nothing is started again
        honcho.wait(timeout=20)
        assert Path(f"{serve}.term").exists()
        assert len(runs(serve)) == 1
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()


def test_a_process_killed_by_the_stop_signal_exits_like_a_shell_reports_it(tmp_path):
    proc, log = respawn(tmp_path, "die")
    try:
        wait_for(lambda: runs(log), message="the process started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert len(runs(log)) == 1
    finally:
        proc.kill()
        proc.wait()
