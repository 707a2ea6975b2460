"""The dependency rules of docs/DESIGN.md ("Architecture"), checked on the source: every import, at module level or
inside a function, of reconciliation/, trades/ and tradeops/ (migrations aside).

- no import cycle between the project's modules;
- services (the domain rooms) never import an interface (tasks, bot, admin, management commands, the stream's
  processes, the health views);
- `trades/models.py` and `trades/binance_client.py` never reach `reconciliation`, and reconciliation's admin does not
  import the trades admin (their shared helpers are in trades/admin_base.py);
- the rule and the snapshots do no I/O: they never reach Binance's client;
- `sandbox/` imports nothing of the project, nor Django;
- the development commands' app (`demo`) is not installed in production.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("reconciliation", "trades", "tradeops")
FIRST_PARTY = (*PROJECT, "demo", "bench", "sandbox", "tests")

INTERFACES = (
    "reconciliation.tasks",
    "reconciliation.bot",
    "reconciliation.admin",
    "reconciliation.management",
    "reconciliation.user_stream",
    "reconciliation.stream.runner",
    "reconciliation.stream.connection",
    "reconciliation.stream.messages",
    "reconciliation.stream.shards",
    "reconciliation.stream.state",
    "reconciliation.health.views",
    "trades.admin",
    "trades.schedules_admin",
)
SERVICES = (
    "reconciliation.services",
    "reconciliation.gateway",
    "reconciliation.operator",
    "reconciliation.orders",
    "reconciliation.reconcile",
    "reconciliation.cancels",
    "reconciliation.entries",
    "reconciliation.positions",
    "reconciliation.health.checks",
    "reconciliation.health.heartbeats",
    "reconciliation.health.metrics",
    "reconciliation.stream.guard",
    "reconciliation.stream.events",
    "reconciliation.stream.states",
)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules(*packages: str) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


@cache
def imports_of(path: Path) -> frozenset[str]:
    """Every module `path` imports, anywhere in it, as absolute names (`from x import y` counts x.y when y is one of
    the project's modules, else x)."""
    known = modules(*FIRST_PARTY)
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in known else source)
    return frozenset(found)


def project_graph() -> dict[str, set[str]]:
    mods = modules(*PROJECT)
    return {name: {m for m in imports_of(path) if m in mods and m != name} for name, path in mods.items()}


def reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or of one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_the_imports_it_checks():
    graph = project_graph()
    assert "reconciliation.services" in graph["reconciliation.tasks"]
    assert "reconciliation.orders.rules" in graph["reconciliation.orders.apply"]  # `from . import rules`
    assert "reconciliation.tasks" in graph["reconciliation.stream.messages"]  # a function-level import


def test_no_import_cycle():
    assert cycles(project_graph()) == []


def test_services_never_import_an_interface():
    graph = project_graph()
    wrong = {
        name: sorted(m for m in graph[name] if _within(m, INTERFACES))
        for name in graph
        if _within(name, SERVICES) and not _within(name, INTERFACES)
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_the_models_and_the_gateway_never_reach_reconciliation():
    graph = project_graph()
    for name in ("trades.models", "trades.binance_client"):
        assert [m for m in reachable(name, graph) if _within(m, ("reconciliation",))] == [], name


def test_the_reconciliation_admin_does_not_import_the_trades_admin():
    assert "trades.admin" not in project_graph()["reconciliation.admin"]


def test_the_rule_and_the_snapshots_do_no_io():
    graph = project_graph()
    for name in ("reconciliation.orders.rules", "reconciliation.orders.snapshots", "reconciliation.orders.results"):
        reached = reachable(name, graph)
        assert not reached & {"trades.binance_client", "reconciliation.gateway", "trades.egress"}, name


def test_the_sandbox_imports_nothing_of_the_project_nor_django():
    for name, path in modules("sandbox").items():
        outside = {m for m in imports_of(path) if m.split(".")[0] in (*PROJECT, "demo", "bench", "django")}
        assert outside == set(), name


def test_production_does_not_install_the_development_commands(tmp_path):
    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "x" * 50,
        "FIELD_ENCRYPTION_KEY": "2rrJ6Kp0d3hL2n-1mGsB5t4hXn3PqGQ8l2c7Ew5oW0Y=",
        "TRADEOPS_VAR_DIR": str(tmp_path),
    }
    code = "import tradeops.settings as s; print('demo' in s.INSTALLED_APPS)"
    answers = {}
    for debug in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env | {"DJANGO_DEBUG": debug}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        answers[debug] = out.stdout.strip()
    assert answers == {"0": "False", "1": "True"}
