"""A daily schedule for pruning old reconcile reports; like 0002, created once and never overwritten."""

from django.db import migrations

NAME = "prune old reconcile reports"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    if not PeriodicTask.objects.filter(name=NAME).exists():
        interval, _ = IntervalSchedule.objects.get_or_create(every=86400, period="seconds")
        PeriodicTask.objects.create(
            name=NAME,
            task="reconciliation.tasks.prune_reconcile_runs",
            interval=interval,
            expire_seconds=3600,
            enabled=True,
        )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("reconciliation", "0004_reconcile_run_retention")]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
