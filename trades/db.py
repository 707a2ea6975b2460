"""Bounded retry of transient database errors (MySQL deadlock, lock-wait timeout, lost connection)."""

import functools
import logging
import random
import time

from django.db import OperationalError, connection

logger = logging.getLogger(__name__)

DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
SERVER_GONE_AWAY = 2006
LOST_CONNECTION = 2013
TRANSIENT_ERROR_CODES = frozenset({DEADLOCK, LOCK_WAIT_TIMEOUT, SERVER_GONE_AWAY, LOST_CONNECTION})
CONNECTION_ERROR_CODES = frozenset({SERVER_GONE_AWAY, LOST_CONNECTION})


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
                        code, fn.__qualname__, attempt, tries, delay,
                    )
                    time.sleep(delay)
            raise AssertionError("unreachable")

        return wrapper

    return decorate(func) if func is not None else decorate
