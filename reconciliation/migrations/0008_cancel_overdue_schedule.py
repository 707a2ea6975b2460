"""The deadline sweep's schedule (every 15 s): entry deadlines live in the database (Trade.cancel_after), and this is
what enforces them when a countdown message is lost. Like 0002, created once and never overwritten."""

from django.db import migrations

NAME = "cancel entries past their deadline"
EVERY_SEC = 15


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    if not PeriodicTask.objects.filter(name=NAME).exists():
        interval, _ = IntervalSchedule.objects.get_or_create(every=EVERY_SEC, period="seconds")
        # Expires before the next one is due: a sweep that waited that long is superseded by the next.
        PeriodicTask.objects.create(
            name=NAME,
            task="reconciliation.tasks.cancel_overdue_entries",
            interval=interval,
            expire_seconds=EVERY_SEC - 1,
            enabled=True,
        )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("reconciliation", "0007_worker_heartbeat"),
        ("trades", "0006_trade_cancel_after"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
