"""Worker heartbeats: the `worker_heartbeat` task writes one, /health/'s `workers` check reads them."""

from datetime import timedelta

from django.utils import timezone

from ..models import WorkerHeartbeat

HEARTBEAT_TASK = "reconciliation.tasks.worker_heartbeat"
HEARTBEAT_EVERY_SEC = 15  # the schedule migration 0006 creates


def note_worker_heartbeat(*, hostname: str) -> None:
    WorkerHeartbeat.objects.update_or_create(hostname=hostname, defaults={"seen_at": timezone.now()})


def recent_worker_heartbeats(*, within_sec: float) -> list[WorkerHeartbeat]:
    """Newest first; a worker gone for longer than `within_sec` is left out."""
    since = timezone.now() - timedelta(seconds=within_sec)
    return list(WorkerHeartbeat.objects.filter(seen_at__gte=since).order_by("-seen_at")[:50])
