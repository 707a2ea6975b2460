"""/health/'s `workers` check: a worker ran the heartbeat task (beat, every 15 s) within HEALTH_WORKER_MAX_AGE_SEC."""

from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from reconciliation import tasks
from reconciliation.health.heartbeats import HEARTBEAT_EVERY_SEC, HEARTBEAT_TASK
from reconciliation.models import WorkerHeartbeat
from tests.helpers import wait_for
from tradeops.celery import app


@pytest.fixture
def client(client, django_user_model):
    """/health/'s details are for staff (or the METRICS_TOKEN): read them as a logged-in superuser."""
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


def workers_check(client):
    body = client.get("/health/").json()
    return body["checks"]["workers"], body["details"].get("workers", {})


def seen(hostname, ago_sec):
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"seen_at": timezone.now() - timedelta(seconds=ago_sec)}
    )


@pytest.mark.django_db
def test_ok_while_some_worker_ran_the_heartbeat_lately(client, settings):
    settings.HEALTH_WORKER_MAX_AGE_SEC = 60
    seen("worker1@ops-1", 50)
    seen("worker2@ops-2", 600)  # gone for ten minutes: not counted, not failing the check while another answers

    state, details = workers_check(client)

    assert state == "ok"
    assert details["workers"] == ["worker1@ops-1"]
    assert 50 <= details["age_sec"] < 55 and details["max_age_sec"] == 60


@pytest.mark.django_db
@pytest.mark.parametrize("last_seen_ago", [None, 61, 7200])
def test_error_once_no_worker_ran_it_for_longer_than_the_limit(client, settings, last_seen_ago):
    settings.HEALTH_WORKER_MAX_AGE_SEC = 60
    if last_seen_ago is not None:
        seen("worker1@ops-1", last_seen_ago)

    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == "error"
    assert "no worker has run the heartbeat task" in response.json()["details"]["workers"]["error"]


@pytest.mark.django_db
def test_beat_sends_the_heartbeat_every_15_s_and_a_late_one_expires():
    [schedule] = PeriodicTask.objects.filter(task=HEARTBEAT_TASK)
    assert schedule.enabled
    assert schedule.interval.schedule.run_every == timedelta(seconds=HEARTBEAT_EVERY_SEC) == timedelta(seconds=15)
    assert schedule.expire_seconds == 14  # within one interval, as every schedule


@pytest.mark.worker
@pytest.mark.slow  # a real worker and a heartbeat round trip: ~4 s
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_running_the_heartbeat_makes_the_check_ok(client):
    assert workers_check(client)[0] == "error"
    app.control.purge()
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"
    ):
        tasks.worker_heartbeat.delay()
        wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=30, message="the worker ran the heartbeat")

    state, details = workers_check(client)
    assert state == "ok"
    assert len(details["workers"]) == 1
