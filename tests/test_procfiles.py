"""Procfile (production) and Procfile.dev (`make run`) run the same worker, beat and stream; only the dev one starts
a sandbox exchange and the demo story."""

import configparser
from pathlib import Path

from honcho.environ import parse_procfile

REPO = Path(__file__).resolve().parent.parent


def processes(name: str) -> dict[str, str]:
    return parse_procfile((REPO / name).read_text()).processes


def test_dev_runs_the_production_processes_unchanged():
    prod, dev = processes("Procfile"), processes("Procfile.dev")
    assert set(prod) == {"web", "worker", "beat", "stream"}
    for name in ("worker", "beat", "stream"):
        assert dev[name] == prod[name], name


def test_only_the_dev_procfile_starts_a_sandbox_or_the_demo():
    prod, dev = processes("Procfile"), processes("Procfile.dev")
    assert {"sandbox", "story"} <= set(dev)
    assert not any("sandbox" in command or "demo_story" in command for command in prod.values())
    assert "runserver" not in prod["web"] and "gunicorn" in prod["web"]


def test_every_production_process_is_started_again_when_it_exits():
    """One process exiting must not stop the others (honcho stops them all once one exits): each runs under
    tradeops.respawn, which restarts it instead of exiting."""
    for name, command in processes("Procfile").items():
        assert command.startswith("python -m tradeops.respawn "), name


def systemd_units() -> dict[str, configparser.ConfigParser]:
    units = {}
    for path in (REPO / "deploy" / "systemd").glob("*.service"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read(path)
        units[path.name] = parser
    return units


def test_the_systemd_units_run_the_procfile_processes_and_restart_them_on_their_own():
    units = systemd_units()
    expected = {
        "web": "tradeops-web.service",
        "worker": "tradeops-worker@.service",
        "beat": "tradeops-beat.service",
        "stream": "tradeops-stream.service",
    }
    assert set(units) == set(expected.values())
    for name, command in processes("Procfile").items():
        unit = units[expected[name]]
        assert unit["Service"]["Restart"] == "always", name
        assert unit["Unit"]["StartLimitIntervalSec"] == "0", name  # never give up restarting
        # The same program and arguments as the Procfile's line (systemd restarts it: no respawn wrapper there).
        program = command.removeprefix("python -m tradeops.respawn ").split(" --")[0].removeprefix("python ")
        assert program in unit["Service"]["ExecStart"], name
        assert "tradeops.respawn" not in unit["Service"]["ExecStart"], name
