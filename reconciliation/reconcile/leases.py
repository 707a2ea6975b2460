"""At most one reconcile per account at a time: a lease on the account's sync-state row.

Taken with one conditional UPDATE (free, or expired) and an expiry longer than a task's hard time limit, so a killed
worker's lease simply runs out. Expiry is set and compared on the database's clock (trades.db.DatabaseNow), never a
host's: a worker whose clock runs ahead cannot take a lease that is still live, one whose clock runs behind cannot
hold one past its expiry. Works the same on SQLite and MariaDB (which has no SKIP LOCKED), and no database
transaction is held across the HTTP calls the lease protects.
"""

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db.models import DateTimeField, ExpressionWrapper, Q

from trades.db import DatabaseNow

from ..models import AccountSyncState

logger = logging.getLogger(__name__)


def sync_state(account_id: int) -> AccountSyncState:
    state, _ = AccountSyncState.objects.get_or_create(account_id=account_id)
    return state


@contextmanager
def account_lease(account_id: int, *, seconds: int | None = None) -> Iterator[bool]:
    """Yield True while this caller holds the account's lease, False if another holder has it (then do nothing)."""
    sync_state(account_id)
    token = uuid.uuid4().hex
    until = ExpressionWrapper(
        DatabaseNow() + timedelta(seconds=seconds or settings.RECONCILE_LEASE_SEC), output_field=DateTimeField()
    )
    held = (
        AccountSyncState.objects.filter(account_id=account_id)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=DatabaseNow()))
        .update(lease_owner=token, lease_until=until)
        == 1
    )
    if not held:
        logger.info("account %s: reconcile lease busy, skipping", account_id)
    try:
        yield held
    finally:
        if held:
            AccountSyncState.objects.filter(account_id=account_id, lease_owner=token).update(
                lease_owner="", lease_until=None
            )
