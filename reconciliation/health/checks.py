"""The health checks: each returns (ok, what it saw). /health/ (views.py) runs them all; the alert evaluator reads
the same ones, so a threshold is defined once.

- database: SELECT 1;
- broker: a connection to CELERY_BROKER_URL within HEALTH_BROKER_TIMEOUT_SEC;
- beat: the reconcile schedule (django-celery-beat) ran within HEALTH_BEAT_MAX_AGE_SEC (default: 3 of its intervals);
- user_stream: every active account's stream is connected, or (re)connecting for less than HEALTH_STREAM_GRACE_SEC,
  and the stream process has shown a heartbeat within three account refreshes (a killed process keeps its state),
  and no account's stream is marked deaf (connected, but missing order events: reconciliation/stream/guard.py);
- workers: a Celery worker ran the heartbeat task (beat sends it every 15 s) within HEALTH_WORKER_MAX_AGE_SEC.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

RECONCILE_TASK = "reconciliation.tasks.reconcile_all_accounts"
Check = tuple[bool, dict[str, Any]]  # ok, and what the check saw


def check_database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True, {}


def check_broker() -> Check:
    from kombu import Connection

    url = settings.CELERY_BROKER_URL
    timeout = settings.HEALTH_BROKER_TIMEOUT_SEC
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}
    with Connection(url, transport_options=options, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    return True, {"transport": url.split(":", 1)[0]}  # never the URL: it may hold a password


def check_beat() -> Check:
    from django_celery_beat.models import PeriodicTask

    tasks = [
        t
        for t in PeriodicTask.objects.filter(task=RECONCILE_TASK, enabled=True).select_related("interval")
        if t.interval is not None and "deep" not in (t.kwargs or "")
    ]
    if not tasks:
        return False, {"error": f"no enabled interval schedule for {RECONCILE_TASK}"}
    task = min(tasks, key=lambda t: t.interval.schedule.run_every)
    interval = task.interval.schedule.run_every.total_seconds()
    max_age = settings.HEALTH_BEAT_MAX_AGE_SEC or 3 * interval
    details = {
        "schedule": task.name,
        "every_sec": interval,
        "max_age_sec": max_age,
        "last_run_at": task.last_run_at.isoformat() if task.last_run_at else None,
    }
    if task.last_run_at is None:
        return False, details | {"error": "never ran"}
    age = (timezone.now() - task.last_run_at).total_seconds()
    details["age_sec"] = round(age, 1)
    return age <= max_age, details


def check_user_streams() -> Check:
    from trades.models import Account

    from ..models import AccountSyncState
    from ..reconcile.audit import stream_heartbeat_max_age
    from ..stream.states import ON_ITS_WAY, StreamState

    now = timezone.now()
    grace = timedelta(seconds=settings.HEALTH_STREAM_GRACE_SEC)
    heartbeat_max_age = stream_heartbeat_max_age()  # the same bound the audit cadence trusts a stream by
    states = {s.account_id: s for s in AccountSyncState.objects.all()}
    healthy, details = True, {}
    for account in Account.objects.filter(is_active=True).only("pk", "name"):
        state = states.get(account.pk)
        current = state.stream_state if state else ""
        since = state.stream_state_at if state else None
        beat = state.stream_heartbeat_at if state else None
        alive = beat is not None and now - beat < heartbeat_max_age  # a killed process leaves "connected" behind
        streaming = alive and (
            current == StreamState.CONNECTED or (current in ON_ITS_WAY and since and now - since < grace)
        )
        deaf = state.stream_deaf_since if state else None  # connected, but missing events (stream/guard.py)
        ok = streaming and deaf is None
        healthy &= bool(ok)
        details[account.name] = {
            "state": current or "none",
            "since": since.isoformat() if since else None,
            "last_event_at": state.stream_last_event_at.isoformat() if state and state.stream_last_event_at else None,
            "heartbeat_at": beat.isoformat() if beat else None,
            "deaf_since": deaf.isoformat() if deaf else None,
            "streaming": bool(streaming),  # alive and (re)connecting in time: ok but for a deaf mark
            "ok": bool(ok),
        }
    return healthy, details


def check_workers() -> Check:
    """Some worker has taken a task off the broker and written to the database lately: the heartbeat task, sent by
    beat, written by whichever worker runs it. One indexed read per request, the same on every broker. No worker,
    workers cut off from the broker or the database, or a queue so backed up that a task waits longer than the limit
    all show as stale (so does a stopped beat, which the beat check names)."""
    from .heartbeats import HEARTBEAT_EVERY_SEC, recent_worker_heartbeats

    now, max_age = timezone.now(), settings.HEALTH_WORKER_MAX_AGE_SEC
    seen = recent_worker_heartbeats(within_sec=max(max_age, 3600))
    details = {
        "max_age_sec": max_age,
        "heartbeat_every_sec": HEARTBEAT_EVERY_SEC,
        "last_seen_at": seen[0].seen_at.isoformat() if seen else None,
    }
    if not seen:
        return False, details | {"error": "no worker has run the heartbeat task in the last hour"}
    age = (now - seen[0].seen_at).total_seconds()
    details |= {
        "age_sec": round(age, 1),
        "workers": sorted(h.hostname for h in seen if (now - h.seen_at).total_seconds() <= max_age),
    }
    if age > max_age:
        return False, details | {"error": f"no worker has run the heartbeat task for {age:.0f} s"}
    return True, details


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "beat": check_beat,
    "user_stream": check_user_streams,
    "workers": check_workers,
}
