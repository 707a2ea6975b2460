"""Procfile (production) and Procfile.dev (`make run`) run the same worker, beat and stream; only the dev one starts
a sandbox exchange and the demo story."""

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
