"""Worker heartbeats for /health/'s `workers` check: the table, and the schedule that sends `worker_heartbeat` every
15 s (like 0002, created once and never overwritten). A heartbeat older than one interval is useless: it expires
within one."""

from django.db import migrations, models

NAME = "worker heartbeat (health check)"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    if not PeriodicTask.objects.filter(name=NAME).exists():
        interval, _ = IntervalSchedule.objects.get_or_create(every=15, period="seconds")
        PeriodicTask.objects.create(
            name=NAME, task="reconciliation.tasks.worker_heartbeat", interval=interval, expire_seconds=14, enabled=True
        )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [("reconciliation", "0006_stream_guard")]

    operations = [
        migrations.CreateModel(
            name="WorkerHeartbeat",
            fields=[
                ("hostname", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("seen_at", models.DateTimeField(db_index=True)),
            ],
        ),
        migrations.RunPython(create_schedule, remove_schedule),
    ]
