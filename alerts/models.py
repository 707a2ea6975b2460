"""What the alert evaluator (alerts/evaluator.py) keeps: one row per cause, and the evaluator's own lease.

An Alert's `key` names its cause (``trade_flagged:42``, ``stream_down:7``, ``beat_stale``…) and is unique: the row
is created once, by whichever evaluation saw the cause first, and only that one enqueues the notice. Later
evaluations that still see the cause count a repeat; the first one that no longer sees it marks the row resolved
(and enqueues one "resolved" notice). A cause seen again after that reopens the same row.
"""

from django.db import models
from django.utils import timezone


class Alert(models.Model):
    class Status(models.TextChoices):
        FIRING = "firing", "firing"
        RESOLVED = "resolved", "resolved"

    key = models.CharField(max_length=191, unique=True, help_text="The cause: kind, and the id it is about.")
    kind = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FIRING)
    one_shot = models.BooleanField(
        default=False, help_text="An event (a correction), not a condition: sent once, resolved without a notice."
    )
    account_name = models.CharField(max_length=64, blank=True, default="")
    trade_id = models.BigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, help_text="What happened, in one line.")
    admin_path = models.CharField(max_length=255, blank=True, default="", help_text="The admin page it is about.")
    first_seen_at = models.DateTimeField(default=timezone.now, help_text="When this firing started.")
    last_seen_at = models.DateTimeField(default=timezone.now)
    repeats = models.PositiveIntegerField(default=0, help_text="Evaluations that saw the cause again (not re-sent).")
    resolved_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When the firing notice was delivered.")
    resolved_sent_at = models.DateTimeField(null=True, blank=True, help_text="When the resolved notice was delivered.")
    claim_until = models.DateTimeField(
        null=True, blank=True, help_text="A send task holds the row until then (one notice in flight at a time)."
    )
    last_error = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-last_seen_at"]
        permissions = [("send_test_alert", "Can send a test alert through ALERT_URLS")]
        indexes = [models.Index(fields=["status", "last_seen_at"], name="alert_status_seen")]

    def __str__(self) -> str:
        return f"{self.key} [{self.status}]"


class EvaluatorState(models.Model):
    """One row (pk 1): who evaluates now (a lease, so two beat ticks or two workers never evaluate at once) and how
    many evaluations have run (tests and the admin watch it)."""

    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    evaluations = models.PositiveBigIntegerField(default=0)
    last_evaluated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"alert evaluator: {self.evaluations} evaluations"
