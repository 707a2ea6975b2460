"""Celery tasks of the alerts: the periodic evaluation, and the sends with their retry policy (logic in
evaluator.py and notify.py)."""

import random

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from . import evaluator, notify

SEND_MAX_RETRIES = 12  # backoff 5 s doubling, capped at 10 min, jittered: up to about an hour of trying


@shared_task(ignore_result=True)
def evaluate_alerts() -> dict:
    return evaluator.evaluate()


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(notify.DeliveryFailed, OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=SEND_MAX_RETRIES,
)
def send_alert(self: Task, alert_id: int, notice: str) -> str:
    try:
        return notify.send_notice(alert_id, notice)
    except notify.Busy as exc:
        raise self.retry(exc=exc, countdown=5 + random.uniform(0, 2)) from exc


@shared_task(
    bind=True,
    autoretry_for=(notify.DeliveryFailed,),
    retry_backoff=5,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=3,
)
def send_test_alert(self: Task) -> str:
    return notify.send_test()
