"""The stream's blocking side: the database (accounts to stream, AccountSyncState) and the thread hop to reach it."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any, TypeVar

from cryptography.fernet import InvalidToken
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connection
from django.utils import timezone

from trades.models import Account

from ..models import AccountSyncState
from ..reconcile.leases import sync_state
from .states import StreamState

logger = logging.getLogger("reconciliation.user_stream")

# What reading a row whose api_secret cannot be decrypted raises (trades/fields.py; wrong FIELD_ENCRYPTION_KEY).
UNREADABLE = (ImproperlyConfigured, InvalidToken)

T = TypeVar("T")


def recycle_connections() -> None:
    """What Django does around a request: close this thread's connections that are broken or past CONN_MAX_AGE.
    Never inside a transaction (a caller's atomic block, a test's): that connection is in use."""
    if not connection.in_atomic_block:
        close_old_connections()


def _fresh_connection(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    recycle_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        recycle_connections()


async def blocking(executor: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Await fn(*args, **kwargs) run in the executor (never on the event loop)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(_fresh_connection, fn, *args, **kwargs))


def fingerprint(account: Account) -> str:
    """Changes when anything the stream connects with changes (keys, testnet), without keeping the secret."""
    material = "\0".join((account.api_key, account.api_secret or "", str(bool(account.use_testnet))))
    return hashlib.sha256(material.encode()).hexdigest()


def load_accounts(names: list[str] | None) -> dict[int, Account]:
    """The accounts to stream now: the active ones, or the active ones among `names`.

    One query normally. When a row cannot be decrypted, that one row must not stop every account from streaming:
    the accounts are then read one by one and each unreadable one is skipped with an ERROR (every refresh, until
    its keys are re-entered or the key configuration is fixed)."""
    query = Account.objects.filter(is_active=True)
    if names:
        query = query.filter(name__in=names)
    try:
        return {account.pk: account for account in query}
    except UNREADABLE:
        pass
    accounts = {}
    for pk, name in query.order_by("pk").values_list("pk", "name"):
        try:
            accounts[pk] = query.get(pk=pk)
        except Account.DoesNotExist:  # deleted or disabled in between
            continue
        except UNREADABLE as exc:  # the message names the field and the cause, never a value
            logger.error(
                "user_stream account_unreadable account=%s/%s: not streaming it: %s: %s",
                pk,
                name,
                type(exc).__name__,
                str(exc)[:200],
            )
    return accounts


def record_state(account_id: int, state: StreamState, at: datetime | None = None) -> None:
    sync_state(account_id)
    at = at or timezone.now()
    AccountSyncState.objects.filter(account_id=account_id).update(
        stream_state=state.value, stream_state_at=at, stream_heartbeat_at=at
    )


def record_heartbeat(account_ids: list[int]) -> None:
    """This process is alive and streams these accounts (one UPDATE per account refresh)."""
    AccountSyncState.objects.filter(account_id__in=account_ids).update(stream_heartbeat_at=timezone.now())


def record_last_event(account_id: int, at: datetime) -> None:
    AccountSyncState.objects.filter(account_id=account_id).update(stream_last_event_at=at)


def load_deaf_marks(account_ids: list[int]) -> dict[int, datetime]:
    """Accounts whose stream a reconcile marked deaf (reconciliation/stream/guard.py), and since when."""
    rows = AccountSyncState.objects.filter(account_id__in=account_ids, stream_deaf_since__isnull=False).values_list(
        "account_id", "stream_deaf_since"
    )
    # The filter leaves out the NULLs already; the `if` only tells the type checker so.
    return {account_id: since for account_id, since in rows if since is not None}
