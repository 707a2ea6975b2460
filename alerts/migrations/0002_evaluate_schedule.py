"""The alert evaluator's schedule (every 15 s). Like reconciliation's schedules: created once, editable in the admin,
never overwritten here."""

from django.db import migrations

NAME = "evaluate alerts"
EVERY_SEC = 15


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    if not PeriodicTask.objects.filter(name=NAME).exists():
        interval, _ = IntervalSchedule.objects.get_or_create(every=EVERY_SEC, period="seconds")
        # Expires before the next one is due: an evaluation that waited that long is superseded by the next.
        PeriodicTask.objects.create(
            name=NAME,
            task="alerts.tasks.evaluate_alerts",
            interval=interval,
            expire_seconds=EVERY_SEC - 1,
            enabled=True,
        )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
