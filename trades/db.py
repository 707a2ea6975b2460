"""Bounded retry of transient database errors (MySQL deadlock, lock-wait timeout, lost connection), and the
database server's clock."""

import functools
import logging
import random
import time
from datetime import UTC, datetime

from django.db import InterfaceError, OperationalError, connection
from django.db.models.functions import Now

logger = logging.getLogger(__name__)

DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
SERVER_GONE_AWAY = 2006
LOST_CONNECTION = 2013
TRANSIENT_ERROR_CODES = frozenset({DEADLOCK, LOCK_WAIT_TIMEOUT, SERVER_GONE_AWAY, LOST_CONNECTION})
CONNECTION_ERROR_CODES = frozenset({SERVER_GONE_AWAY, LOST_CONNECTION})
# What a task sees while the database is away (server down, connection refused or lost, deadlock): worth retrying.
DB_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)


def db_error_code(exc: BaseException) -> int | None:
    """The MySQL error number of an OperationalError, or None (SQLite and others carry no number)."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_transient_db_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and db_error_code(exc) in TRANSIENT_ERROR_CODES


def retry_transient_db_errors(func=None, *, tries: int = 3, base_delay: float = 0.05):
    """Run func, retrying up to `tries` times in all on a transient DB error, then let the error propagate.

    Only a whole transaction can be retried: inside an outer atomic block the error propagates at once, so the
    owner of that block (or the Celery task around it) decides.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for attempt in range(1, tries + 1):
                try:
                    return fn(*args, **kwargs)
                except OperationalError as exc:
                    if not is_transient_db_error(exc) or connection.in_atomic_block or attempt == tries:
                        raise
                    code = db_error_code(exc)
                    if code in CONNECTION_ERROR_CODES:
                        connection.close()  # the next query opens a fresh connection
                    delay = base_delay * (2 ** (attempt - 1)) * (1 + random.random())
                    logger.warning(
                        "transient DB error %s in %s (attempt %d/%d), retrying in %.2fs",
                        code,
                        fn.__qualname__,
                        attempt,
                        tries,
                        delay,
                    )
                    time.sleep(delay)
            raise AssertionError("unreachable")

        return wrapper

    return decorate(func) if func is not None else decorate


class DatabaseNow(Now):
    """The database server's current time in UTC, as an SQL expression. MySQL's CURRENT_TIMESTAMP (Django's Now) is
    in the session's time zone, which need not be UTC; UTC_TIMESTAMP is, like the naive UTC values Django stores."""

    def as_mysql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="UTC_TIMESTAMP(6)", **extra_context)


def db_now() -> datetime:
    """The database server's clock (aware, UTC): one clock for every worker, whatever a worker's own clock says.
    Deadlines and grace periods that several processes compare are measured on it."""
    if connection.vendor == "sqlite":
        # In-process: its clock is this process's (and its NOW has only milliseconds).
        return datetime.now(UTC)
    with connection.cursor() as cursor:
        cursor.execute("SELECT UTC_TIMESTAMP(6)" if connection.vendor == "mysql" else "SELECT CURRENT_TIMESTAMP")
        value = cursor.fetchone()[0]
    return value if value.tzinfo else value.replace(tzinfo=UTC)
