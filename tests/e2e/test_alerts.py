"""Alerts on the real stack (sandbox, two Celery workers, the user stream, beat, MariaDB, Redis): a trade that needs
an operator and an orphan position each reach a local HTTP endpoint (an Apprise json:// URL on 127.0.0.1) exactly
once, and once each "resolved" when the operator has dealt with them — and nothing more over later evaluations."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts.models import Alert, EvaluatorState
from reconciliation.models import OrphanPosition
from reconciliation.orders.operator import mark_trade_manually
from tests.alerts.receiver import Receiver
from tests.factories import TradeFactory
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ADMIN = "http://127.0.0.1:8000"
STACK_ENV: dict[str, str] = {"ADMIN_BASE_URL": ADMIN}  # ALERT_URLS added once the endpoint has its port


@pytest.fixture(scope="module", autouse=True)
def endpoint():
    """The local endpoint, up before the module's stack starts (autouse: set up first), which sends to it."""
    with Receiver() as receiver:
        STACK_ENV["ALERT_URLS"] = receiver.url
        yield receiver


def notices(endpoint: Receiver, kind: str, key: str) -> list[str]:
    return [m for m in endpoint.messages() if m.startswith(f"{kind} {key}: ")]


def exactly_one(endpoint: Receiver, kind: str, key: str) -> str | None:
    found = notices(endpoint, kind, key)
    assert len(found) <= 1, f"{kind} {key} sent {len(found)} times: {found}"
    return found[0] if found else None


def run_schedules(e2e) -> None:
    """The schedules this test needs (the e2e fixture disables them all): the alert evaluation, every second here
    (15 s in production), the workers' heartbeat (else "workers_stale" fires) and beat's reconcile, all every second."""
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    # By name, created if absent: a transactional test before this one flushed what the migrations created.
    for name, task in (
        ("evaluate alerts", "alerts.tasks.evaluate_alerts"),
        ("worker heartbeat (health check)", "reconciliation.tasks.worker_heartbeat"),
    ):
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "interval": every_second, "enabled": True, "expire_seconds": 2}
        )
    e2e.start_beat(every=1)


def evaluations() -> int:
    state = EvaluatorState.objects.filter(pk=1).first()
    return state.evaluations if state else 0


def test_a_flagged_trade_and_an_orphan_alert_once_each_then_resolve_once_each(e2e, endpoint):
    account = e2e.account()
    # A pending trade whose order Binance showed working before (exchange_status NEW) and now says does not exist:
    # the reconcile cannot decide and flags it for an operator.
    trade = TradeFactory(
        account=account,
        client_order_id=f"e2e-{uuid.uuid4().hex[:20]}",
        exchange_status="NEW",
        placed_at=timezone.now() - timedelta(hours=1),
    )
    with BinanceFuturesClient.for_account(account) as client:  # someone traded by hand: an orphan
        client.place_order("ETHUSDT", "SELL", Decimal("0.5"), order_type="MARKET")
    run_schedules(e2e)

    wait_for(lambda: Trade.objects.get(pk=trade.pk).needs_operator, message="the trade flagged by the reconcile")
    orphan = wait_for(
        lambda: OrphanPosition.objects.filter(account=account, symbol="ETHUSDT", status="open").first(),
        message="the orphan recorded by the position sync",
    )
    trade_key, orphan_key = f"trade_flagged:{trade.pk}", f"orphan:{orphan.pk}"

    fired = {
        key: wait_for(lambda key=key: exactly_one(endpoint, "FIRING", key), timeout=60, message=f"FIRING {key}")
        for key in (trade_key, orphan_key)
    }
    assert f"trade {trade.pk} " in fired[trade_key] and f"account {account.name} needs an operator" in fired[trade_key]
    assert fired[trade_key].endswith(f" — {ADMIN}/admin/trades/trade/{trade.pk}/change/")
    assert f"orphan position on account {account.name}: ETHUSDT BOTH -0.5 " in fired[orphan_key]
    assert account.api_secret not in " ".join(endpoint.messages())

    # Still there for a few more evaluations: counted, not re-sent.
    seen = evaluations()
    wait_for(lambda: evaluations() >= seen + 3, timeout=60, message="three more evaluations")
    assert Alert.objects.get(key=trade_key).repeats >= 2
    for key in (trade_key, orphan_key):
        assert len(notices(endpoint, "FIRING", key)) == 1

    # The operator deals with both: marks the trade (Binance confirms it has no such order) and closes the position.
    mark_trade_manually(
        Trade.objects.get(pk=trade.pk), status=Trade.Status.FAILED, reason="never reached Binance", actor="ops"
    )
    with BinanceFuturesClient.for_account(account) as client:
        client.place_order("ETHUSDT", "BUY", Decimal("0.5"), order_type="MARKET", reduce_only=True)
    wait_for(
        lambda: OrphanPosition.objects.get(pk=orphan.pk).status == OrphanPosition.Status.RESOLVED,
        message="the orphan resolved by the position sync",
    )

    for key in (trade_key, orphan_key):
        wait_for(lambda key=key: exactly_one(endpoint, "RESOLVED", key), timeout=60, message=f"RESOLVED {key}")

    seen = evaluations()
    wait_for(lambda: evaluations() >= seen + 3, timeout=60, message="three more evaluations")
    for key in (trade_key, orphan_key):
        assert len(notices(endpoint, "FIRING", key)) == 1, endpoint.messages()
        assert len(notices(endpoint, "RESOLVED", key)) == 1, endpoint.messages()
        alert = Alert.objects.get(key=key)
        assert alert.status == "resolved" and alert.sent_at and alert.resolved_sent_at
    e2e.stack.assert_alive("worker1", "worker2", "stream", "beat")
    print("\n".join(endpoint.messages()))
