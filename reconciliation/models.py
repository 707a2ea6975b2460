"""What reconciliation keeps about accounts: a lease (one reconcile per account at a time), the last results and
the user stream's state, the reports of every run, and exchange positions no trade explains (orphans)."""

from django.db import models
from django.utils import timezone

from trades.models import MONEY, Account, Trade


class AccountSyncState(models.Model):
    """One row per account: the reconcile lease and what the admin and /health/ show about the account."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, primary_key=True, related_name="sync_state")
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_reconcile_at = models.DateTimeField(null=True, blank=True)
    last_reconcile_report = models.JSONField(default=dict, blank=True)
    last_position_sync_at = models.DateTimeField(null=True, blank=True)
    used_weight = models.PositiveIntegerField(default=0, help_text="Binance X-MBX-USED-WEIGHT-1M last seen.")
    stream_state = models.CharField(max_length=32, blank=True, default="")
    stream_state_at = models.DateTimeField(null=True, blank=True)
    stream_last_event_at = models.DateTimeField(null=True, blank=True)
    stream_heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Written by a live stream process every account refresh; a killed process "
        "leaves its last state behind, so health trusts that state only while this is fresh.",
    )
    stream_deaf_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set when REST look-ups found USER_STREAM_DEAF_AFTER order changes within an "
        "hour that the connected socket never delivered (stream_guard.py); the stream process then reconnects, and "
        "the reconnect's reconcile clears it.",
    )

    def __str__(self):
        return f"sync state of {self.account}"


class ReconcileRun(models.Model):
    class Kind(models.TextChoices):
        PENDING = "pending", "pending trades"
        DEEP = "deep", "pending trades, all ages"
        POSITIONS = "positions", "positions"

    class Outcome(models.TextChoices):
        OK = "ok", "ok"
        PARTIAL = "partial", "stopped early (weight budget)"
        SKIPPED = "skipped", "skipped: busy"
        ERROR = "error", "error"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="reconcile_runs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reason = models.CharField(max_length=32, help_text="beat, ws_connect, admin, cancel, command, …")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["account", "started_at"], name="reconcilerun_account_started"),
            models.Index(fields=["started_at"], name="reconcilerun_started"),  # retention pruning
        ]

    def __str__(self):
        return f"{self.kind} {self.account} {self.reason} {self.outcome}"


class OrphanPosition(models.Model):
    """An exchange position (or part of one) that no open or partially filled trade explains."""

    class Status(models.TextChoices):
        OPEN = "open", "open"
        RESOLVED = "resolved", "resolved (explained again)"
        RECOVERED = "recovered", "recovered as a trade"
        DISMISSED = "dismissed", "dismissed"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="orphan_positions")
    symbol = models.CharField(max_length=32)
    position_side = models.CharField(max_length=5, choices=Trade.PositionSide.choices, default=Trade.PositionSide.BOTH)
    quantity = models.DecimalField(**MONEY, help_text="Unexplained signed quantity (positive long, negative short).")
    exchange_position = models.DecimalField(**MONEY, help_text="The whole exchange position when last seen.")
    entry_price = models.DecimalField(**MONEY, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    trade = models.ForeignKey(Trade, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    note = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-last_seen_at"]
        # One open orphan per (account, symbol, position side) is kept by sync_positions_with_binance under the account lease:
        # MariaDB has no partial unique indexes.
        indexes = [models.Index(fields=["account", "symbol", "status"], name="orphan_account_symbol_status")]

    def __str__(self):
        return f"{self.account} {self.symbol} {self.position_side} {self.quantity} [{self.status}]"


class PrunedTotal(models.Model):
    """What retention deleted from the rows /metrics counts (ReconcileRun, StreamMiss), kept as totals so that those
    Prometheus counters never go down when old rows are pruned (a drop reads as a counter reset and a false spike).
    One row per (metric, label values); written only by the pruning, read by the collector."""

    metric = models.CharField(max_length=64)
    labels = models.CharField(max_length=255, help_text="The label values, JSON-encoded.")
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["metric", "labels"], name="pruned_total_unique")]

    def __str__(self) -> str:
        return f"{self.metric}{self.labels} = {self.value:g}"


class StreamMiss(models.Model):
    """An order change a REST look-up found that the account's user stream, connected at the time, never delivered
    (stream/guard.py). Counted in /metrics; enough of them within an hour mark the stream deaf."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="stream_misses")
    trade = models.ForeignKey(Trade, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    detected_at = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=32, help_text="The path that found it: reconcile, cancel_verify, admin.")
    exchange_status = models.CharField(max_length=24)
    exchange_update_time = models.BigIntegerField(help_text="Binance updateTime (ms) of the change.")
    connected_since = models.DateTimeField(help_text="When the socket that should have delivered it connected.")

    class Meta:
        ordering = ["-detected_at"]
        indexes = [models.Index(fields=["account", "detected_at"], name="streammiss_account_detected")]

    def __str__(self):
        return f"{self.account} missed {self.exchange_status} of trade {self.trade_id}"


class WorkerHeartbeat(models.Model):
    """When a Celery worker last ran `worker_heartbeat` (sent by beat every 15 s): /health/'s `workers` check. One row
    per worker hostname, overwritten."""

    hostname = models.CharField(max_length=255, primary_key=True)
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return f"{self.hostname} seen {self.seen_at:%Y-%m-%d %H:%M:%S}"


class StreamProcess(models.Model):
    """A live `run_user_stream` process (reconciliation/stream/shards.py): it renews expires_at on the database's
    clock every few seconds; the live ones share the accounts between them. A killed process's row simply expires."""

    holder = models.CharField(max_length=64, primary_key=True, help_text="host:pid:random, unique per process run.")
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return self.holder


class StreamLease(models.Model):
    """Which stream process may stream the account, until when (the database's clock). Claimed and renewed with
    conditional UPDATEs; a process streams an account only while it holds the lease."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, primary_key=True, related_name="stream_lease")
    holder = models.CharField(max_length=64, blank=True, default="", db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"stream lease of {self.account_id}: {self.holder or 'free'}"


class ExchangePosition(models.Model):
    """Binance's position on one (symbol, position side) as the last position sync read it (positionRisk): what the
    desk's exposure page compares our open trades with. Replaced per account on every read; a side that went flat
    has no row (reconciliation/positions/last_sync.py)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="exchange_positions")
    symbol = models.CharField(max_length=32)
    position_side = models.CharField(max_length=5, choices=Trade.PositionSide.choices, default=Trade.PositionSide.BOTH)
    quantity = models.DecimalField(**MONEY, help_text="Signed positionAmt (positive long, negative short).")
    entry_price = models.DecimalField(**MONEY, null=True, blank=True)
    synced_at = models.DateTimeField(help_text="When the position sync read it from Binance.")

    class Meta:
        ordering = ["account", "symbol", "position_side"]
        constraints = [
            models.UniqueConstraint(fields=["account", "symbol", "position_side"], name="exchangeposition_unique_key")
        ]

    def __str__(self):
        return f"{self.account} {self.symbol} {self.position_side} {self.quantity} @ {self.synced_at:%Y-%m-%d %H:%M:%S}"
