"""/health/ (200 only when database, broker, beat and every active account's user stream are fine) and /metrics."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from reconciliation.models import AccountSyncState, ReconcileRun, StreamMiss, WorkerHeartbeat
from reconciliation.reconcile.runs import prune_reconcile_runs
from tests.factories import AccountFactory, TradeEventFactory, TradeFactory

pytestmark = pytest.mark.django_db

RECONCILE_SCHEDULE = "reconcile pending trades (all accounts)"


@pytest.fixture
def beat_ran():
    def at(ago_sec: float):
        PeriodicTask.objects.filter(name=RECONCILE_SCHEDULE).update(
            last_run_at=timezone.now() - timedelta(seconds=ago_sec)
        )

    at(10)
    return at


@pytest.fixture(autouse=True)
def worker_ran():
    """A worker ran the heartbeat task 5 s ago (the `workers` check; its own tests: test_health_workers.py)."""
    WorkerHeartbeat.objects.create(hostname="worker1@ops", seen_at=timezone.now() - timedelta(seconds=5))


def stream(account, state, ago_sec=5, heartbeat_ago_sec=5):
    AccountSyncState.objects.update_or_create(
        account=account,
        defaults={
            "stream_state": state,
            "stream_state_at": timezone.now() - timedelta(seconds=ago_sec),
            "stream_heartbeat_at": timezone.now() - timedelta(seconds=heartbeat_ago_sec),
        },
    )


def test_healthy(admin_client_logged_in, beat_ran):  # details: staff only (see test_health_and_metrics_access.py)
    client = admin_client_logged_in
    stream(AccountFactory(name="desk"), "connected", ago_sec=3600)
    stream(AccountFactory(name="desk-2"), "reconnecting", ago_sec=5)  # a short gap is normal
    AccountFactory(name="retired", is_active=False)  # not streamed, not checked

    response = client.get("/health/")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "broker": "ok", "beat": "ok", "user_stream": "ok", "workers": "ok"}
    assert set(body["details"]["user_stream"]) == {"desk", "desk-2"}
    assert body["details"]["beat"]["max_age_sec"] == 180


@pytest.mark.parametrize(
    "problem, check",
    [
        ("beat never ran", "beat"),
        ("beat stale", "beat"),
        ("beat disabled", "beat"),
        ("stream missing", "user_stream"),
        ("stream reconnecting too long", "user_stream"),
        ("stream stopped", "user_stream"),
        ("stream process dead", "user_stream"),
        ("broker down", "broker"),
    ],
)
def test_unhealthy(client, beat_ran, settings, problem, check):
    account = AccountFactory(name="desk")
    stream(account, "connected")
    if problem == "beat never ran":
        PeriodicTask.objects.update(last_run_at=None)
    elif problem == "beat stale":
        beat_ran(181)
    elif problem == "beat disabled":
        PeriodicTask.objects.update(enabled=False)
    elif problem == "stream missing":
        AccountSyncState.objects.all().delete()
    elif problem == "stream reconnecting too long":
        stream(account, "reconnecting", ago_sec=121)
    elif problem == "stream stopped":
        stream(account, "stopped")
    elif problem == "stream process dead":  # SIGKILLed while connected: its state stays, its heartbeat stops
        stream(account, "connected", heartbeat_ago_sec=3 * settings.USER_STREAM_ACCOUNT_REFRESH_SEC + 11)
    elif problem == "broker down":
        settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}

    response = client.get("/health/")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"][check] == "error"
    assert [name for name, value in body["checks"].items() if value != "ok"] == [check]


def test_broker_check_never_shows_the_url(client, beat_ran, settings):
    settings.CELERY_BROKER_URL = "redis://:s3cret-pw@127.0.0.1:1/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
    body = client.get("/health/").content.decode()
    assert "s3cret-pw" not in body


def test_metrics(client, settings):
    settings.METRICS_CACHE_SEC = 0
    desk = AccountFactory(name="desk")
    ReconcileRun.objects.create(account=desk, kind="pending", reason="beat", outcome="ok", duration_ms=40)
    ReconcileRun.objects.create(account=desk, kind="pending", reason="ws_connect", outcome="ok", duration_ms=700)
    ReconcileRun.objects.create(account=desk, kind="positions", reason="ws_connect", outcome="ok", duration_ms=90)
    ReconcileRun.objects.create(account=desk, kind="pending", reason="beat", outcome="skipped")
    AccountSyncState.objects.create(
        account=desk,
        used_weight=37,
        stream_state="connected",
        stream_state_at=timezone.now(),
        last_reconcile_at=timezone.now(),
    )
    TradeFactory(account=desk, created_at=timezone.now() - timedelta(minutes=10))
    TradeFactory(account=desk, needs_operator=True)
    TradeEventFactory(source="reconcile", from_status="pending", to_status="open")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    for line in [
        'tradeops_reconcile_runs_total{kind="pending",outcome="ok",reason="beat"} 1.0',
        'tradeops_reconcile_runs_total{kind="pending",outcome="skipped",reason="beat"} 1.0',
        'tradeops_reconcile_duration_seconds_bucket{kind="pending",le="0.05"} 1.0',
        'tradeops_reconcile_duration_seconds_bucket{kind="pending",le="1"} 2.0',
        'tradeops_reconcile_duration_seconds_count{kind="pending"} 2.0',
        'tradeops_reconcile_duration_seconds_sum{kind="pending"} 0.74',
        'tradeops_trade_state_changes_total{source="reconcile",to_status="open"} 1.0',
        'tradeops_binance_used_weight{account="desk"} 37.0',
        'tradeops_user_stream_connected{account="desk"} 1.0',
        'tradeops_user_stream_connects_total{account="desk"} 1.0',
        'tradeops_pending_trades{account="desk"} 2.0',
        "tradeops_trades_needing_operator 1.0",
    ]:
        assert line in text, line
    oldest = next(
        line for line in text.splitlines() if line.startswith('tradeops_oldest_pending_age_seconds{account="desk"}')
    )
    assert 590 < float(oldest.split()[-1]) < 700


def test_pruning_old_reports_never_makes_a_counter_go_down(client, settings):
    """/metrics counts ReconcileRun and StreamMiss rows, which retention deletes: what it deletes is carried, so a
    scrape after the prune reads the same counters (a drop would read as a reset: a false spike in rate())."""
    settings.METRICS_CACHE_SEC = 0
    settings.RECONCILE_RUN_RETENTION_DAYS = 14
    desk = AccountFactory(name="desk")
    AccountSyncState.objects.create(account=desk)
    old = timezone.now() - timedelta(days=30)
    for reason, kind, ms in [("beat", "pending", 40), ("ws_connect", "pending", 700), ("ws_connect", "positions", 90)]:
        ReconcileRun.objects.create(
            account=desk, kind=kind, reason=reason, outcome="ok", duration_ms=ms, started_at=old
        )
    ReconcileRun.objects.create(account=desk, kind="pending", reason="beat", outcome="ok", duration_ms=3000)  # kept
    StreamMiss.objects.create(
        account=desk,
        detected_at=old,
        source="reconcile",
        exchange_status="FILLED",
        exchange_update_time=1,
        connected_since=old,
    )

    def counters() -> list[str]:
        text = client.get("/metrics").content.decode()
        names = ("tradeops_reconcile_runs_total", "tradeops_reconcile_duration_seconds", "tradeops_user_stream_")
        return sorted(line for line in text.splitlines() if line.startswith(names) and "_created" not in line)

    before = counters()
    assert 'tradeops_reconcile_runs_total{kind="pending",outcome="ok",reason="beat"} 2.0' in before
    assert 'tradeops_user_stream_missed_events_total{account="desk"} 1.0' in before
    assert prune_reconcile_runs() == 3 and ReconcileRun.objects.count() == 1 and not StreamMiss.objects.exists()
    assert counters() == before
    prune_reconcile_runs()  # nothing more to prune: nothing carried twice
    assert counters() == before
    ReconcileRun.objects.create(account=desk, kind="pending", reason="beat", outcome="ok", duration_ms=40)
    assert 'tradeops_reconcile_runs_total{kind="pending",outcome="ok",reason="beat"} 3.0' in counters()
