"""deploy/monitoring/: the Grafana dashboard and the Prometheus rules name only metrics /metrics serves, and the rules
pass `promtool check rules` (Debian's `prometheus` package; skipped where it is missing, except in CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.utils import timezone

from reconciliation.models import AccountSyncState, OrphanPosition, ReconcileRun, StreamMiss
from tests.factories import AccountFactory, TradeEventFactory, TradeFactory

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_FILES = sorted(MONITORING.glob("*.yml"))
METRIC = re.compile(r"\btradeops_[a-zA-Z0-9_]+")


def _strings_under(node: Any, keys: set[str]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            elif key in keys and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield value["query"]
            else:
                yield from _strings_under(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings_under(item, keys)


def dashboard_exprs() -> list[str]:
    return list(_strings_under(json.loads(DASHBOARD.read_text()), {"expr", "query", "definition"}))


def rule_exprs() -> list[str]:
    exprs = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            exprs += [str(rule["expr"]) for rule in group["rules"]]
    return exprs


@pytest.fixture
def served_metric_names(client, settings, db) -> set[str]:
    """Every sample name /metrics serves, with data behind every labelled family."""
    settings.METRICS_TOKEN = ""
    settings.METRICS_CACHE_SEC = 0
    now = timezone.now()
    account = AccountFactory(name="acct-mon")
    AccountSyncState.objects.create(
        account=account,
        stream_state="connected",
        stream_state_at=now,
        stream_last_event_at=now,
        stream_heartbeat_at=now,
        stream_deaf_since=now,
        last_reconcile_at=now,
        used_weight=12,
    )
    for outcome in ("ok", "partial"):
        ReconcileRun.objects.create(account=account, kind="pending", reason="ws_connect", outcome=outcome)
    trade = TradeFactory(account=account, needs_operator=True)
    TradeEventFactory(trade=trade)
    OrphanPosition.objects.create(account=account, symbol="ETHUSDT", quantity=Decimal("1"), exchange_position=1)
    StreamMiss.objects.create(
        account=account,
        trade=trade,
        source="reconcile",
        exchange_status="FILLED",
        exchange_update_time=1,
        connected_since=now - timedelta(minutes=1),
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    names = set()
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_files_exist_and_name_metrics():
    assert DASHBOARD.exists() and RULE_FILES
    assert any(METRIC.search(e) for e in dashboard_exprs())
    assert any(METRIC.search(e) for e in rule_exprs())


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_the_files_name_is_served_by_metrics(source, served_metric_names):
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert named, f"no tradeops_ metric named in the {source}"
    assert named - served_metric_names == set(), f"the {source} names metrics /metrics does not serve"


def test_the_dashboard_is_importable_json_with_unique_panel_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "tradeops"
    assert all(target.get("expr") for panel in dashboard["panels"] for target in panel["targets"])


def test_promtool_checks_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: apt-get install prometheus (it provides /usr/bin/promtool)")
        pytest.skip("promtool not on PATH: apt-get install prometheus (Debian's package provides it)")
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
