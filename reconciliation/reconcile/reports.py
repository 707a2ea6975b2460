"""The small report every reconciliation service returns, and where it is kept (ReconcileRun, AccountSyncState)."""

import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

from django.utils import timezone

from ..models import AccountSyncState, ReconcileRun
from ..orders.results import CHANGES, COUNTED, Result
from ..stream.guard import MissDetector
from .leases import sync_state


@dataclass
class Report:
    """A run's report. Its counters of order results are named after them (orders/results.py: every COUNTED result
    has its field, checked below), so `count(result)` cannot miss one."""

    account_id: int
    kind: str
    reason: str
    actor: str = ""  # the operator who asked for the run (admin), else empty
    checked: int = 0
    opened: int = 0
    progress: int = 0
    cancelled: int = 0
    failed: int = 0
    corrected: int = 0
    noted: int = 0
    unchanged: int = 0
    stale: int = 0
    ignored: int = 0
    not_found_in_grace: int = 0
    resting: int = 0  # pending trades whose order openOrders listed: no look-up of their own
    rechecked: int = 0  # trades failed as "not found" looked up again (orders/rechecks.py)
    missed_events: int = 0  # changes found by REST that the connected user stream never delivered (stream/guard.py)
    needs_operator: int = 0
    errors: int = 0
    weight_used: int = 0
    http_calls: int = 0
    duration_ms: int = 0
    stopped_early: bool = False
    retry_after: float | None = None
    skipped: bool = False
    extra: dict = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic, repr=False)
    _started_at: datetime = field(default_factory=timezone.now, repr=False)

    def count(self, result: Result) -> None:
        setattr(self, result.value, getattr(self, result.value) + 1)

    @property
    def started_at(self) -> datetime:
        return self._started_at

    @property
    def stream_guard(self) -> MissDetector:
        """This run's missed-event detector (not a field: not part of the kept report)."""
        guard = self.__dict__.get("_stream_guard")
        if guard is None:
            guard = self.__dict__["_stream_guard"] = MissDetector(self.account_id)
        return guard

    @property
    def changed(self) -> int:
        return sum(getattr(self, result.value) for result in CHANGES)

    @property
    def outcome(self) -> str:
        if self.skipped:
            return ReconcileRun.Outcome.SKIPPED
        if self.stopped_early:
            return ReconcileRun.Outcome.PARTIAL
        return ReconcileRun.Outcome.ERROR if self.errors else ReconcileRun.Outcome.OK

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("_started")
        data.pop("_started_at")
        data["outcome"] = str(self.outcome)
        return data

    def finish(self, *, used_weight: int | None = None) -> dict:
        """Stamp the duration, keep the run (ReconcileRun) and the account's latest state; return the dict."""
        self.duration_ms = int((time.monotonic() - self._started) * 1000)
        data = self.as_dict()
        ReconcileRun.objects.create(
            account_id=self.account_id,
            kind=self.kind,
            reason=self.reason[:32],
            outcome=self.outcome,
            started_at=self._started_at,
            duration_ms=self.duration_ms,
            report=data,
        )
        if not self.skipped:
            sync_state(self.account_id)
            now = timezone.now()
            updates = {"last_reconcile_at": now, "last_reconcile_report": data}
            if self.kind == ReconcileRun.Kind.POSITIONS:
                updates = {"last_position_sync_at": now}
            if used_weight is not None:
                updates["used_weight"] = used_weight
            AccountSyncState.objects.filter(account_id=self.account_id).update(**updates)
        return data


_uncounted = sorted(COUNTED - {f.name for f in fields(Report)})
if _uncounted:  # a result was added to orders/results.py without its counter here
    raise TypeError(f"Report has no counter for the results {_uncounted}")
