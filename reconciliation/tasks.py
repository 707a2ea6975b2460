"""Celery tasks: ids in, one service call, and the retry policy. No logic here beyond what to retry and when.

The bot's entry flow (docs in README "How the bot calls tradeops"):
    open_position(account_id, symbol, side, quantity, price=None, timeout_sec=None, client_order_id=None)
      → place_entry_order(trade_id, timeout_sec) (stores the deadline, Trade.cancel_after, then sends the order)
      → entry_timeout(trade_id) after timeout_sec → cancel_and_verify(trade_id) if the trade is still pending
      (and cancel_overdue_entries, every 15 s, for any deadline whose countdown was lost: cancels/deadlines.py)
Every cancel goes through cancel_and_verify: chain(cancel_order, verify_cancel), where cancel_order never fails
the chain (its errors are logged and passed on), so the verification always runs.
"""

import logging
import random
import socket
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from celery import Task, chain, shared_task
from celery.exceptions import Retry
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import F, QuerySet

from trades.binance_client import client_order_id_for
from trades.db import DB_UNAVAILABLE_ERRORS
from trades.exceptions import ExchangeError, RateLimited, TransientExchangeError
from trades.models import Account, Trade, TradeEvent

from . import services
from .health import heartbeats
from .reconcile import audit

logger = logging.getLogger(__name__)

SKIPPED_MAX_RETRIES = 30  # ~45 s of waiting for another reconcile of the account; the next beat covers the rest
BEAT_EXPIRES_SEC = 55  # a beat-fired fan-out older than one interval is useless: the next one is coming
RETRY_EXPIRES_SEC = BEAT_EXPIRES_SEC  # a retry of an expiring run: as long to be picked up, once it is due


class ExchangeTask(Task):
    """Retries transient exchange and database errors with exponential backoff and jitter; a RateLimited retry
    waits at least as long as Binance asked (Retry-After). A retry(max_retries=N) limit holds for that call only; a
    retry of a run that expires (beat-fired) expires RETRY_EXPIRES_SEC after it is due."""

    autoretry_for = (TransientExchangeError, OperationalError, InterfaceError)
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 6
    acks_late = True

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        if isinstance(exc, RateLimited):
            countdown = max(countdown or 0, exc.retry_after + random.uniform(0, 1))
        if countdown is not None and eta is None:
            countdown = capped_countdown(countdown, what=f"{self.name} retry")
        if self.request.expires and "expires" not in options:
            # Celery's retry keeps the first message's absolute expiry: a beat run retried after a rate limit
            # (≥ 60 s) would be due after it and discarded on arrival, every time.
            if eta is not None:
                options["expires"] = eta + timedelta(seconds=RETRY_EXPIRES_SEC)
            else:
                options["expires"] = (self.default_retry_delay if countdown is None else countdown) + RETRY_EXPIRES_SEC
        try:
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        finally:
            # Celery 5 keeps max_retries as override_max_retries on this task object, which every run in the worker
            # process shares, and autoretry_for applies it to later, unrelated runs (its own clean-up is never
            # reached: retry() raises). Our explicit limits are meant for the call that passes them.
            self.__dict__.pop("override_max_retries", None)


def capped_countdown(seconds: float, *, what: str) -> float:
    """`seconds`, or CELERY_MAX_COUNTDOWN_SEC if less: no message of ours outlives the broker's visibility window.
    A capped retry runs early and asks Binance again (a rate limit answers with the time still to wait)."""
    cap = settings.CELERY_MAX_COUNTDOWN_SEC
    if cap is None or seconds <= cap:
        return seconds
    logger.warning("%s: a countdown of %.0fs is capped at %ss (the broker's visibility window)", what, seconds, cap)
    return cap - random.uniform(0, min(30.0, cap / 10))


def _active_account(account_id: int) -> Account | None:
    account = Account.objects.filter(pk=account_id, is_active=True).first()
    if account is None:
        logger.info("account %s is inactive or gone; nothing to do", account_id)
    return account


SCHEDULED_REASONS = frozenset({"beat", "deep"})


def _retry_if_unfinished(task: Task, report: dict[str, Any], reason: str) -> dict[str, Any]:
    """Stopped early (weight budget, 429): continue after Binance's window. Skipped because another reconcile of
    the account holds the lease, or some look-ups failed: a scheduled run leaves it to the next one, but a run asked
    for a reason (a WebSocket reconnect, a cancel, an operator) is retried — the one in progress may have read
    before the news, and the failed look-ups are exactly what was asked."""
    if report.get("stopped_early"):
        raise task.retry(countdown=(report.get("retry_after") or 60) + random.uniform(0, 2), max_retries=20)
    if reason in SCHEDULED_REASONS:
        return report  # the next scheduled run is the retry
    if report.get("skipped"):
        raise task.retry(countdown=1 + random.uniform(0, 1), max_retries=SKIPPED_MAX_RETRIES)
    if report.get("errors"):  # some look-ups failed (5xx, timeouts): the check asked for has not happened yet
        raise task.retry(countdown=min(2**task.request.retries, 60) * random.uniform(0.5, 1.0))
    return report


CONNECT_COVERED = "reconciled since the connection"


def connect_reconcile_covered(account_id: int, reason: str, retries: int) -> bool:
    """A retry of a (re)connect's reconcile whose work another did meanwhile: an ok pending reconcile started after
    the connection (audit.reconciled_since_connect; in a reconnect storm, the beat's). Running it too would spend
    the weight the other gaps need. Never the first run: the stream records its connection while that run is on its
    way, and before that an older state could be compared with."""
    return reason == "ws_connect" and retries > 0 and audit.reconciled_since_connect(account_id)


@shared_task(base=ExchangeTask, bind=True)
def reconcile_account(self: ExchangeTask, account_id: int, reason: str = "beat", deep: bool = False) -> dict[str, Any]:
    account = _active_account(account_id)
    if account is None:
        return {"skipped": "inactive"}
    if connect_reconcile_covered(account_id, reason, self.request.retries):
        return {"skipped": CONNECT_COVERED}
    return _retry_if_unfinished(self, services.reconcile_pending(account, reason=reason, deep=deep), reason)


@shared_task
def reconcile_all_accounts(deep: bool = False) -> int:
    """One reconcile_account per active account, each on its own: one account's failure never stops the others.
    The beat's pass leaves out the accounts whose healthy user stream was audited by REST less than
    RECONCILE_AUDIT_SEC ago (reconcile/audit.py); the deep pass leaves out none. The least recently reconciled go first: when
    the egress budget cannot cover every account in one minute, the ones it refuses are served first at the next
    beat, instead of the same accounts every minute. Returns how many reconciles it sent."""
    ids = _stalest_first(Account.objects.filter(is_active=True), "sync_state__last_reconcile_at")
    not_due = {} if deep else audit.audit_not_due(ids)
    if not_due:
        logger.info(
            "reconcile beat: %d of %d accounts left to their next audit (%s): %s",
            len(not_due),
            len(ids),
            audit.STREAM_HEALTHY,
            ",".join(str(pk) for pk in sorted(not_due)[:50]),
        )
    sent = 0
    for account_id in ids:
        if account_id in not_due:
            continue
        reconcile_account.apply_async(
            (account_id,),
            {"reason": "deep" if deep else "beat", "deep": deep},
            # celery-types says float | datetime, but Celery takes None as "never expires" (Celery.send_task).
            expires=None if deep else BEAT_EXPIRES_SEC,  # type: ignore[arg-type]
        )
        sent += 1
    return sent


def _stalest_first(accounts: QuerySet[Account], last_at: str) -> list[int]:
    """The accounts' ids, the one never done (`last_at` empty) or done longest ago first."""
    return list(accounts.order_by(F(last_at).asc(nulls_first=True), "pk").values_list("pk", flat=True))


CONNECT_WAIT_SEC = 30  # a (re)connect's position sync waits at most this long (× 1–1.5) at a time for the reconcile
CONNECT_WAIT_TRIES = 10  # … 2, 4, 8, 16, then 30 s: about 3–5 minutes in all, then it runs anyway


def connect_wait_sec(account_id: int, reason: str, retries: int) -> float | None:
    """Seconds a position sync asked by a (re)connect should wait before running, or None. While that connection's
    reconcile has not ended ok (audit.reconciled_since_connect, counting a reconcile started a clock margin before the
    recorded connect: the connection's own starts within moments of it) the sync would spend weight (its own pending
    reconcile, positionRisk) the reconcile of the gap needs: in a reconnect storm the gaps' fills come first. The
    waits start short (a reconcile usually ends within seconds of the connect) and grow to CONNECT_WAIT_SEC. Once it
    ran, the sync may leave the pending reconcile to it (positions/sync.py, pending_trusted)."""
    if reason != "ws_connect" or retries >= CONNECT_WAIT_TRIES:
        return None
    if audit.reconciled_since_connect(account_id, margin=-audit.CLOCK_MARGIN):
        return None
    return min(2.0 ** (retries + 1), CONNECT_WAIT_SEC) * random.uniform(1, 1.5)


@shared_task(base=ExchangeTask, bind=True)
def sync_positions(self: ExchangeTask, account_id: int, reason: str = "beat") -> dict[str, Any]:
    account = _active_account(account_id)
    if account is None:
        return {"skipped": "inactive"}
    wait = connect_wait_sec(account_id, reason, self.request.retries)
    if wait is not None:
        raise self.retry(countdown=wait, max_retries=CONNECT_WAIT_TRIES + 20)
    report = services.sync_positions_with_binance(account, reason=reason)
    confirm_after = (report.get("extra") or {}).get("confirm_after")
    if confirm_after is not None:  # a position read found trades' positions gone: a later read confirms (or not)
        sync_positions.apply_async((account_id,), kwargs={"reason": "confirm_close"}, countdown=confirm_after)
    return _retry_if_unfinished(self, report, reason)


@shared_task
def sync_all_positions() -> int:
    """One sync_positions per active account, except those whose healthy user stream had a position sync less than
    RECONCILE_AUDIT_SEC ago (audit.positions_not_due): the stream syncs positions on every ACCOUNT_UPDATE and
    (re)connect, so for them this schedule is only the audit. Returns how many syncs it sent."""
    ids = _stalest_first(Account.objects.filter(is_active=True), "sync_state__last_position_sync_at")
    not_due = audit.positions_not_due(ids)
    if not_due:
        logger.info(
            "position sync: %d of %d accounts left to their next audit (%s)",
            len(not_due),
            len(ids),
            audit.STREAM_HEALTHY,
        )
    sent = 0
    for account_id in ids:
        if account_id not in not_due:
            sync_positions.apply_async((account_id,), expires=BEAT_EXPIRES_SEC * 5)
            sent += 1
    return sent


@shared_task
def prune_reconcile_runs() -> int:
    """Daily: drop reconcile reports past RECONCILE_RUN_RETENTION_DAYS (the audit trail of trades is kept)."""
    return services.prune_reconcile_runs()


@shared_task(bind=True, ignore_result=True)
def worker_heartbeat(self: Task) -> None:
    """Every 15 s (beat): whichever worker runs it notes that it did. /health/'s `workers` check reads the newest, so
    it sees the whole path a countdown or a reconcile takes (beat → broker → a worker → the database)."""
    heartbeats.note_worker_heartbeat(hostname=self.request.hostname or socket.gethostname())


# --- cancel → verify ----------------------------------------------------------------------------------------------

CANCEL_MAX_RETRIES = 3  # transient exchange errors (5xx, timeouts, 429); database errors: db_retry_limit()


def _backoff(retries: int) -> float:
    """Exponential backoff with full jitter, from CANCEL_RETRY_BASE_SEC, capped at a minute."""
    base = settings.CANCEL_RETRY_BASE_SEC
    return min(base * 2**retries, 60) * random.uniform(0.5, 1.0)


def db_retry_limit() -> int:
    """Retries of a database error whose backoff (_backoff, at the shortest its jitter allows) adds up to
    CANCEL_DB_RETRY_SEC: a cancel rides out a database outage that long (at most twice that, with the jitter)
    instead of being dropped; after it, the deadline sweep is the backstop."""
    base = max(settings.CANCEL_RETRY_BASE_SEC, 0.01)
    waited, retries = 0.0, 0
    while waited < settings.CANCEL_DB_RETRY_SEC:
        waited += 0.5 * min(base * 2**retries, 60)
        retries += 1
    return retries


def _retry_db_error(task: Task, exc: Exception, what: str) -> Retry:
    """Retry `task` after a database error with backoff, up to db_retry_limit(); then re-raise it."""
    limit = db_retry_limit()
    if task.request.retries >= limit:
        logger.error(
            "%s: database unavailable for %d retries (%s: %s); giving up", what, limit, type(exc).__name__, exc
        )
        raise exc
    logger.warning(
        "%s: database unavailable (%s: %s); retry %d/%d", what, type(exc).__name__, exc, task.request.retries + 1, limit
    )
    return task.retry(exc=exc, countdown=_backoff(task.request.retries), max_retries=limit)


@shared_task(bind=True, acks_late=True)
def cancel_order(self: Task, trade_id: int, actor: str = "") -> dict[str, Any]:
    """Cancel the trade's order. Never fails the chain: whatever happens (the trade's own look-up included), the
    chained verify_cancel must run. Transient exchange errors are retried a few times first; database errors (the
    server away, connections lost) for about CANCEL_DB_RETRY_SEC: a short outage delays the cancel, never drops it."""
    try:
        trade = Trade.objects.select_related("account").filter(pk=trade_id).first()
        if trade is None:
            return {"trade_id": trade_id, "outcome": "no_trade"}
        return services.cancel_trade_order(trade, actor=actor)
    except DB_UNAVAILABLE_ERRORS as exc:
        if self.request.retries < db_retry_limit():
            raise _retry_db_error(self, exc, f"trade {trade_id} cancel") from exc
        logger.warning(
            "trade %s: cancel failed after retries (%s: %s); verifying anyway", trade_id, type(exc).__name__, exc
        )
        return {"trade_id": trade_id, "outcome": "error", "error": str(exc)}
    except TransientExchangeError as exc:
        if self.request.retries < CANCEL_MAX_RETRIES:
            countdown = getattr(exc, "retry_after", 0) or _backoff(self.request.retries)
            raise self.retry(
                exc=exc,
                countdown=capped_countdown(countdown, what=f"trade {trade_id} cancel retry"),
                max_retries=CANCEL_MAX_RETRIES,
            ) from exc
        logger.warning(
            "trade %s: cancel failed after retries (%s: %s); verifying anyway", trade_id, type(exc).__name__, exc
        )
        return {"trade_id": trade_id, "outcome": "error", "error": str(exc)}
    except ExchangeError as exc:
        logger.warning("trade %s: cancel refused (%s); verifying anyway", trade_id, exc)
        return {"trade_id": trade_id, "outcome": "error", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 — the verification is what keeps the books right; let it run
        logger.exception("trade %s: cancel crashed; verifying anyway", trade_id)
        return {"trade_id": trade_id, "outcome": "error", "error": type(exc).__name__}


@shared_task(base=ExchangeTask, bind=True, max_retries=10)
def verify_cancel(self: ExchangeTask, trade_id: int, actor: str = "") -> dict[str, Any]:
    """Fetch the order after a cancel and apply it; while Binance still shows it working, send the cancel again (the
    first CANCEL_RESEND_MAX times: the first one may never have reached Binance) and retry with backoff a bounded
    number of times. Gives up — flags the trade for an operator — then, and also when transient errors (5xx,
    timeouts, 429, the database) outlast max_retries or Binance refuses for good (e.g. revoked keys)."""
    trade = None
    tries = settings.CANCEL_VERIFY_MAX_TRIES
    resend = self.request.retries < min(settings.CANCEL_RESEND_MAX, tries - 1)  # the last look only looks
    try:
        trade = Trade.objects.select_related("account").filter(pk=trade_id).first()
        if trade is None:
            return {"trade_id": trade_id, "result": "no_trade"}
        report = services.verify_after_cancel(trade, actor=actor, resend_cancel=resend)
    except (TransientExchangeError, *DB_UNAVAILABLE_ERRORS) as exc:
        if self.request.retries < self.max_retries:
            raise  # ExchangeTask's autoretry_for: backoff, Retry-After
        return _give_up_verifying(
            trade_id,
            trade,
            f"cancel not verified after {self.max_retries + 1} tries: {type(exc).__name__}: {exc}",
            actor,
        )
    except ExchangeError as exc:
        return _give_up_verifying(trade_id, trade, f"cancel not verified, Binance refused: {exc}", actor)
    if report["still_working"]:
        if self.request.retries + 1 < tries:
            raise self.retry(countdown=_backoff(self.request.retries), max_retries=tries)
        _give_up_verifying(
            trade_id,
            trade,
            f"still {report['exchange_status']} on Binance after cancel and {tries} verifications",
            actor,
        )
    return report


def _give_up_verifying(trade_id: int, trade: Trade | None, reason: str, actor: str = "") -> dict:
    """Nobody will check this cancel again by itself: say so once, loudly, and put the trade in front of a person."""
    logger.error("trade %s: cancel verification gave up: %s; flagging the trade for an operator", trade_id, reason)
    if trade is None:  # its own look-up was what failed
        trade = Trade.objects.filter(pk=trade_id).first()
    if trade is not None:
        services.flag_for_operator(trade, reason=reason, source=TradeEvent.Source.CANCEL_VERIFY, actor=actor)
    return {"trade_id": trade_id, "result": "gave_up", "reason": reason}


@shared_task
def cancel_and_verify(trade_id: int, actor: str = "") -> str:
    """Every cancel goes through here (admin, entry timeout, bot): cancel, then always verify. `actor`: the operator
    who asked (admin), recorded on the trade events both steps write."""
    # `actor` only when there is one: a message an older worker (rolling deploy) can still run.
    who = {"actor": actor} if actor else {}
    return chain(cancel_order.si(trade_id, **who), verify_cancel.si(trade_id, **who)).apply_async().id


# --- the bot's entry flow ------------------------------------------------------------------------------------------


@shared_task(bind=True)
def open_position(
    self: Task,
    account_id: int,
    symbol: str,
    side: str,
    quantity: Decimal | int | float | str,
    price: Decimal | int | float | str | None = None,
    timeout_sec: int | None = None,
    client_order_id: str | None = None,
) -> int:
    """Create the pending trade, then place it once the row is committed. Returns the trade id.

    acks_late: a redelivery (worker killed after the commit, before the ack) runs this again. Without a client order
    id from the caller, one is derived from the task id, so the second run finds the first run's trade instead of
    opening a second position (services.open_position is idempotent on the client order id). An empty id ("") is no id:
    it is derived too (passed on, "" would become a fresh random id per run: a second order on redelivery)."""
    if not client_order_id:
        # Called directly (no task id): None, and a fresh one is generated.
        client_order_id = client_order_id_for(self.request.id) if self.request.id else None
    account = Account.objects.get(pk=account_id, is_active=True)
    trade = services.open_position(
        account,
        symbol,
        side,
        quantity,
        price,
        timeout_sec=timeout_sec,
        client_order_id=client_order_id,
        enqueue_placement=lambda trade_id, timeout: place_entry_order.delay(trade_id, timeout),
    )
    return trade.pk


@shared_task(bind=True, acks_late=True)
def place_entry_order(self: Task, trade_id: int, timeout_sec: float | None = None) -> dict[str, Any]:
    """Placement is sent at most once (services.place_entry_order guards it), so it is never auto-retried: an
    unknown outcome stays pending and the entry timeout / reconcile decide. The entry's deadline is stored before
    the order is sent; the countdown below is its fast path, the deadline sweep its backstop."""
    seconds = settings.ENTRY_TIMEOUT_SEC if timeout_sec is None else timeout_sec
    trade = Trade.objects.select_related("account").get(pk=trade_id)
    try:
        return services.place_entry_order(trade, deadline_sec=seconds)
    finally:
        # Also when placement raised (e.g. the DB lost while applying Binance's answer): the order may be live, and
        # without its timeout a LIMIT order could fill hours later. entry_timeout re-checks the trade when it fires.
        if trade.status == Trade.Status.PENDING:
            schedule_entry_timeout(trade_id, seconds)


def schedule_entry_timeout(trade_id: int, seconds: float) -> None:
    """entry_timeout after `seconds`: in hops of at most CELERY_MAX_COUNTDOWN_SEC, so no message outlives the
    broker's visibility window (and is handed out twice)."""
    cap = settings.CELERY_MAX_COUNTDOWN_SEC
    if cap is None or seconds <= cap:
        entry_timeout.apply_async((trade_id,), countdown=seconds)
    else:
        entry_timeout.apply_async((trade_id,), kwargs={"due_at": time.time() + seconds}, countdown=cap)


@shared_task(bind=True, acks_late=True)
def entry_timeout(self: Task, trade_id: int, due_at: float | None = None) -> dict:
    """The entry wait is over: if the trade is still pending (or failed "not found"), cancel and verify, unless the
    deadline sweep already did. Not due yet by the trade's deadline (the database's clock) or `due_at` (a long
    wait's next hop): wait again. Database errors are retried for about CANCEL_DB_RETRY_SEC (the sweep is the
    backstop after that)."""
    try:
        report = services.cancel_entry_at_deadline(trade_id, send=cancel_and_verify, due_at=due_at)
    except DB_UNAVAILABLE_ERRORS as exc:
        raise _retry_db_error(self, exc, f"trade {trade_id} entry timeout") from exc
    if report["outcome"] == "not_due":
        schedule_entry_timeout(trade_id, report["due_in"])
        report["due_in"] = round(report["due_in"])
    return report


@shared_task
def cancel_overdue_entries() -> dict:
    """Beat, every 15 s: every trade past its deadline whose cancel nobody sent goes through cancel_and_verify, once
    (cancels/deadlines.py). The backstop for countdowns lost with the broker's data or held by a dead worker."""
    return services.cancel_overdue_entries(send=cancel_and_verify)
