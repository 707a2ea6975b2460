"""The celery-beat schedules, created once in the database (django-celery-beat). They are editable in the admin and
never overwritten here: a schedule that already exists (by name) is left as the operators set it."""

import json

from django.db import migrations

SCHEDULES = [
    # name, task, every (seconds), kwargs, expires (seconds)
    ("reconcile pending trades (all accounts)", "reconciliation.tasks.reconcile_all_accounts", 60, {}, 55),
    ("sync positions (all accounts)", "reconciliation.tasks.sync_all_positions", 300, {}, 290),
    (
        "deep reconcile of old pending trades (all accounts)",
        "reconciliation.tasks.reconcile_all_accounts",
        3600,
        {"deep": True},
        3500,
    ),
]


def create_schedules(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, every, kwargs, expires in SCHEDULES:
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        PeriodicTask.objects.create(
            name=name,
            task=task,
            interval=interval,
            kwargs=json.dumps(kwargs),
            expire_seconds=expires,
            enabled=True,
        )


def remove_schedules(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, *_ in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("reconciliation", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
