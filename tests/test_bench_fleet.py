"""bench/fleet.py's smoke mode (20 accounts, simulated minutes): it runs, prints its table, and its figures are ones
Binance would allow — the fleet's own scenarios collect no 429 or 418, the healthy streams' trades are verified within
RECONCILE_AUDIT_SEC + 60 s, and the reconnect storm's gap fills are all reconciled. Checks the bench's correctness,
not its speed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_fleet_bench_smoke_run_prints_figures_binance_would_allow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "BINANCE_BUDGET_URL")}
    env["TMPDIR"] = str(tmp_path)  # the bench's throw-away SQLite database and budget
    run = subprocess.run(
        [sys.executable, "bench/fleet.py", "--smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and cells[0] != "scenario":
            rows[cells[0]] = cells
    assert set(rows) == {
        "today's reconcile (every minute, 1 GET per trade, no shared budget)",
        "ours, streams healthy",
        "reconnect storm (every socket dropped at once, a fill in each gap)",
        "ours, streams unhealthy",
    }, run.stdout
    for name, (_, _, _, weight, n429, n418, _, _) in rows.items():
        if name.startswith("today"):
            continue
        assert (n429, n418) == ("0", "0"), (name, run.stdout)
        assert int(weight.split()[0].replace(",", "")) <= 2400
    healthy_oldest = rows["ours, streams healthy"][6]
    assert int(re.sub(r"\D", "", healthy_oldest)) <= 600 + 60, run.stdout
    assert (
        "every gap fill reconciled after"
        in rows["reconnect storm (every socket dropped at once, a fill in each gap)"][7]
    )
    assert "NOT A RESULT: ours" not in run.stdout and "NOT A RESULT: reconnect" not in run.stdout
