"""Celery tasks on a real worker (the test process's own app, in a thread, on the configured broker: Redis in CI's
second pass, the filesystem transport otherwise), the beat schedules, and the tasks' own policies run in-process."""

import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from celery import current_task
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Retry
from django.conf import settings
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from reconciliation import services, tasks
from tests.factories import AccountFactory, TradeFactory
from tests.helpers import place, wait_for
from tradeops.celery import app
from trades.exceptions import ExchangeUnavailable, RateLimited
from trades.models import Account, Trade, TradeEvent


@pytest.fixture(scope="module")
def worker():
    """One real worker for the module (starting and stopping one costs seconds), on an empty queue."""
    app.control.purge()
    with (
        override_settings(CANCEL_RETRY_BASE_SEC=0.05, CANCEL_VERIFY_MAX_TRIES=3, BINANCE_HTTP_TIMEOUT=0.5),
        start_worker(
            app, pool="solo", concurrency=1, perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"
        ),
    ):
        yield


@pytest.fixture
def live_trade(binance, account):
    trade = TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=Decimal("50000"))
    place(trade)
    return trade


def requests_made(binance, what):
    return binance.control.stats()["requests"].get(what, 0)


@pytest.mark.worker
@pytest.mark.slow  # a real worker: seconds to start and stop
@pytest.mark.django_db(transaction=True)
class TestCancelAndVerifyOnAWorker:
    def test_clean_cancel_then_verification(self, worker, binance, live_trade):
        tasks.cancel_and_verify.delay(live_trade.pk)

        wait_for(lambda: requests_made(binance, "GET /fapi/v1/order") >= 1, message="verification ran")
        live_trade.refresh_from_db()
        assert live_trade.status == Trade.Status.CANCELLED
        assert requests_made(binance, "DELETE /fapi/v1/order") == 1

    def test_f4_cancel_loses_the_race_verification_opens_the_trade(self, worker, binance, live_trade):
        binance.control.arm_cancel_race(
            live_trade.account.api_key, "BTCUSDT", client_order_id=live_trade.client_order_id
        )

        tasks.cancel_and_verify.delay(live_trade.pk)

        wait_for(lambda: Trade.objects.get(pk=live_trade.pk).status == Trade.Status.OPEN, message="trade opened")
        [event] = TradeEvent.objects.filter(trade=live_trade)
        assert (event.source, event.to_status, event.filled_qty) == ("cancel_verify", "open", Decimal("0.010"))

    def test_cancel_erroring_every_time_still_verifies_then_flags_the_working_order(self, worker, binance, live_trade):
        binance.control.inject_fault("/fapi/v1/order", "503", count=100, method="DELETE")

        tasks.cancel_and_verify.delay(live_trade.pk)

        wait_for(lambda: Trade.objects.get(pk=live_trade.pk).needs_operator, timeout=20, message="flagged")
        # The cancel and its retries, then the verifications' re-sends (CANCEL_RESEND_MAX, all but the last look).
        resends = min(settings.CANCEL_RESEND_MAX, 3 - 1)
        assert requests_made(binance, "DELETE /fapi/v1/order") == 1 + tasks.CANCEL_MAX_RETRIES + resends
        assert requests_made(binance, "GET /fapi/v1/order") == 3  # CANCEL_VERIFY_MAX_TRIES
        trade = Trade.objects.get(pk=live_trade.pk)
        assert trade.status == Trade.Status.PENDING  # never guessed
        assert "still NEW on Binance" in TradeEvent.objects.get(trade=trade).payload["reason"]

    def test_cancel_answering_5xx_once_is_retried_then_verified(self, worker, binance, live_trade):
        binance.control.inject_fault("/fapi/v1/order", "502", count=1, method="DELETE")

        tasks.cancel_and_verify.delay(live_trade.pk)

        wait_for(lambda: Trade.objects.get(pk=live_trade.pk).status == Trade.Status.CANCELLED, message="cancelled")
        wait_for(lambda: requests_made(binance, "GET /fapi/v1/order") >= 1, message="verification ran")
        assert requests_made(binance, "DELETE /fapi/v1/order") == 2

    def test_cancel_timing_out_is_retried_then_verified(self, worker, binance, live_trade):
        # The exchange sits on the cancel past our 0.5 s timeout (and then executes it, as Binance may).
        binance.control.inject_fault("/fapi/v1/order", "hang", count=1, method="DELETE", hang_sec=1.5)

        tasks.cancel_and_verify.delay(live_trade.pk)

        wait_for(lambda: Trade.objects.get(pk=live_trade.pk).status == Trade.Status.CANCELLED, message="cancelled")
        wait_for(lambda: requests_made(binance, "GET /fapi/v1/order") >= 1, message="verification ran")
        assert TradeEvent.objects.filter(trade=live_trade).count() == 1

    def test_bot_entry_flow_times_out_cancels_and_verifies(self, worker, binance, account):
        # No result backend: a bot that enqueues (rather than calling reconciliation.bot) names its client order id.
        tasks.open_position.delay(
            account.pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=0, client_order_id="bot-entry-1"
        )

        trade = wait_for(
            lambda: Trade.objects.filter(client_order_id="bot-entry-1", status=Trade.Status.CANCELLED).first(),
            message="cancelled",
        )
        assert trade.entry_order_id is not None
        assert requests_made(binance, "POST /fapi/v1/order") == 1


@pytest.mark.django_db
def test_every_beat_schedule_names_a_registered_task():
    app.loader.import_default_modules()
    schedules = list(PeriodicTask.objects.exclude(task="celery.backend_cleanup"))
    assert {p.name for p in schedules} >= {
        "reconcile pending trades (all accounts)",
        "sync positions (all accounts)",
        "deep reconcile of old pending trades (all accounts)",
    }
    for periodic in schedules:
        assert periodic.task in app.tasks, periodic.task
        assert periodic.expire_seconds and periodic.expire_seconds < periodic.interval.every


@pytest.mark.django_db
def test_reconcile_all_accounts_fans_out_one_task_per_active_account(make_account, monkeypatch):
    active = [make_account(), make_account()]
    make_account(is_active=False)
    sent = []
    monkeypatch.setattr(tasks.reconcile_account, "apply_async", lambda args, kwargs, **opts: sent.append(args[0]))

    assert tasks.reconcile_all_accounts() == 2
    assert sorted(sent) == sorted(a.pk for a in active)


# --- the tasks' own policies, run in-process (eagerly) against the sandbox --------------------------------------------


def test_entry_timeout_is_scheduled_even_when_applying_the_placement_answer_fails(binance, account, monkeypatch):
    trade = TradeFactory(account=account, symbol="BTCUSDT", quantity=Decimal("0.010"), price=Decimal("50000"))

    def db_gone(*args, **kwargs):
        raise OperationalError(2013, "Lost connection to MySQL server during query")

    monkeypatch.setattr("reconciliation.entries.place.apply_order_snapshot", db_gone)
    scheduled = []
    monkeypatch.setattr(tasks.entry_timeout, "apply_async", lambda args, **opts: scheduled.append((args, opts)))

    with pytest.raises(OperationalError):
        tasks.place_entry_order(trade.pk, 30)

    assert requests_made(binance, "POST /fapi/v1/order") == 1  # the LIMIT order is live on the exchange
    assert scheduled == [((trade.pk,), {"countdown": 30})]


def open_position_delivery(account, task_id, **kwargs):
    """One delivery of the open_position message `task_id`, as a worker runs it (eagerly, in-process)."""
    kwargs = {"price": "50000", "timeout_sec": 60, **kwargs}
    result = tasks.open_position.apply(
        args=(account.pk, "BTCUSDT", "BUY", "0.010"), kwargs=kwargs, task_id=task_id, throw=True
    )
    return result.get()


def test_open_position_redelivered_after_placement_opens_one_trade_and_one_order(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = open_position_delivery(account, "a6b1c3d2-0000-4000-8000-000000000001")
    placements.run()
    with django_capture_on_commit_callbacks(execute=True):
        again = open_position_delivery(account, "a6b1c3d2-0000-4000-8000-000000000001")  # killed before the ack
    placements.run()

    assert again == first
    trade = Trade.objects.get(account=account)
    assert len(trade.client_order_id) <= 36
    assert len(placements) == 1  # the trade was sent: its placement is not enqueued again
    assert requests_made(binance, "POST /fapi/v1/order") == 1


def test_open_position_redelivered_before_placement_ran_places_it_once(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = open_position_delivery(account, "fixed-id")
    maybe_lost = placements.pop()  # killed between the commit and the enqueue, or the message is still queued
    with django_capture_on_commit_callbacks(execute=True):
        again = open_position_delivery(account, "fixed-id")
    placements.run()

    assert again == first
    assert Trade.objects.filter(account=account).count() == 1
    assert placements == [(first, 60)]  # never sent, so enqueued again
    assert Trade.objects.get(pk=first).entry_order_id is not None
    tasks.place_entry_order(*maybe_lost)  # the first placement turns up after all
    assert requests_made(binance, "POST /fapi/v1/order") == 1  # place_entry_order's claim: one order at most


def test_open_position_runs_under_other_task_ids_open_other_trades(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        ids = {open_position_delivery(account, "order-1"), open_position_delivery(account, "order-2")}
        tasks.open_position(account.pk, "BTCUSDT", "BUY", "0.010", "50000")  # called directly: no task id
        tasks.open_position(account.pk, "BTCUSDT", "BUY", "0.010", "50000")

    assert len(ids) == 2
    assert Trade.objects.filter(account=account).values("client_order_id").distinct().count() == 4
    assert len(placements) == 4


def test_open_position_with_the_callers_client_order_id_is_idempotent(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = open_position_delivery(account, "t-1", client_order_id="bot-entry-7")
        again = open_position_delivery(account, "t-2", client_order_id="bot-entry-7", price="50000.00")

    assert again == first
    assert Trade.objects.filter(account=account).count() == 1


def test_open_position_reusing_a_client_order_id_for_another_order_fails_loudly(
    binance, account, placements, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        open_position_delivery(account, "t-1", client_order_id="bot-entry-7")
        with pytest.raises(ValueError, match="bot-entry-7.*already belongs to trade"):
            open_position_delivery(account, "t-2", client_order_id="bot-entry-7", price="49000")

    assert Trade.objects.filter(account=account).count() == 1
    assert len(placements) == 1


@pytest.fixture
def eager(monkeypatch):
    """Tasks, chains and retries run in-process at once (countdowns are not waited for)."""
    monkeypatch.setitem(app.conf, "task_always_eager", True)


def test_cancel_whose_trade_lookup_fails_still_runs_the_verification(
    binance, live_trade, eager, monkeypatch, settings, caplog
):
    settings.CANCEL_VERIFY_MAX_TRIES = 2
    settings.CANCEL_DB_RETRY_SEC = 1  # the database "returns" for the verification only: keep the retries few
    real_select_related = Trade.objects.select_related

    def select_related(*fields):  # the database is gone for cancel_order only
        if current_task and current_task.name == tasks.cancel_order.name:
            raise OperationalError(2006, "MySQL server has gone away")
        return real_select_related(*fields)

    monkeypatch.setattr(Trade.objects, "select_related", select_related)

    tasks.cancel_and_verify(live_trade.pk)

    # The cancel never got as far as Binance; the verification saw the order working and sent the cancel itself,
    # then looked again.
    assert requests_made(binance, "DELETE /fapi/v1/order") == 1
    assert requests_made(binance, "GET /fapi/v1/order") == 2
    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.needs_operator) == (Trade.Status.CANCELLED, False)
    assert "cancel failed after retries (OperationalError" in caplog.text


@pytest.mark.django_db
def test_one_runs_retry_limit_does_not_leak_into_the_next_run_of_the_task(eager, monkeypatch):
    account = AccountFactory()
    calls = []

    def stopped_early_once(acct, **kwargs):
        calls.append("first")
        return {"stopped_early": len(calls) == 1, "retry_after": 60}

    def exchange_down(acct, **kwargs):
        calls.append("second")
        raise ExchangeUnavailable(None, "Service Unavailable", 503)

    try:
        monkeypatch.setattr(services, "reconcile_pending", stopped_early_once)
        tasks.reconcile_account.apply((account.pk,))  # rate limited once: retry(max_retries=20), then done

        monkeypatch.setattr(services, "reconcile_pending", exchange_down)
        result = tasks.reconcile_account.apply((account.pk,))  # another run: autoretry_for, with the task's limit
    finally:  # were it to leak, keep it out of the other tests
        tasks.reconcile_account.__dict__.pop("override_max_retries", None)

    assert result.failed()
    assert calls.count("second") == 1 + tasks.reconcile_account.max_retries  # 7, not 21


def retry_options(monkeypatch, report, *, expires=None, reason="beat") -> dict:
    """The options reconcile_account's retry is sent with, for a run (as a worker sees it) that ended with `report`."""
    task = tasks.reconcile_account
    sent = []
    monkeypatch.setattr(task, "apply_async", lambda *args, **options: sent.append(options))
    task.push_request(
        id="a-run",
        args=(1,),
        kwargs={"reason": reason},
        retries=0,
        called_directly=False,
        expires=expires,
        delivery_info={},
    )
    try:
        with pytest.raises(Retry):
            tasks._retry_if_unfinished(task, report, reason)
    finally:
        task.pop_request()
    [options] = sent
    return options


def _expiry(expires, now):
    """An apply_async `expires` (seconds from now, a datetime or an ISO string) as a datetime; None stays None."""
    if expires is None or isinstance(expires, datetime):
        return expires
    if isinstance(expires, str):
        return datetime.fromisoformat(expires)
    return now + timedelta(seconds=expires)


@pytest.mark.parametrize(
    "report",
    [
        {"stopped_early": True, "retry_after": 60},  # rate limited: retry after Binance's window
        {"stopped_early": True, "retry_after": 120},  # banned (418)
    ],
)
def test_a_beat_runs_retry_is_not_due_after_it_expires(report, monkeypatch):
    now = timezone.now()
    options = retry_options(monkeypatch, report, expires=(now + timedelta(seconds=tasks.BEAT_EXPIRES_SEC)).isoformat())

    due = now + timedelta(seconds=options["countdown"])
    assert options["countdown"] >= report["retry_after"]
    expiry = _expiry(options["expires"], now)
    assert expiry is None or expiry > due + timedelta(seconds=30)  # time to be picked up once due


def test_a_retry_after_longer_than_the_visibility_window_is_capped(monkeypatch, settings):
    settings.CELERY_MAX_COUNTDOWN_SEC = 540
    options = retry_options(monkeypatch, {"stopped_early": True, "retry_after": 7200}, reason="ws_connect")

    assert 500 <= options["countdown"] <= 540  # runs early; Binance answers with the time still to wait


def test_a_retry_of_a_run_that_never_expires_never_expires(monkeypatch):
    options = retry_options(monkeypatch, {"skipped": True}, reason="ws_connect")

    assert options["expires"] is None


def flag_reason(trade) -> str:
    [event] = TradeEvent.objects.filter(trade=trade, payload__flag="needs_operator")
    return event.payload["reason"]


def test_verify_cancel_gives_up_after_its_retries_and_flags_the_trade(binance, live_trade, eager, caplog):
    binance.control.inject_fault("/fapi/v1/order", "503", count=100, method="GET")

    result = tasks.verify_cancel.apply((live_trade.pk,))

    assert result.successful()
    assert requests_made(binance, "GET /fapi/v1/order") == 1 + tasks.verify_cancel.max_retries
    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.needs_operator) == (Trade.Status.PENDING, True)  # never guessed
    assert "not verified after 11 tries: ExchangeUnavailable" in flag_reason(trade)
    [line] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"trade {trade.pk}: cancel verification gave up" in line.getMessage()


def test_verify_cancel_refused_by_binance_flags_the_trade_at_once(binance, live_trade, eager, caplog):
    Account.objects.filter(pk=live_trade.account_id).update(api_key="k" * 64)  # keys revoked on Binance's side

    result = tasks.verify_cancel.apply((live_trade.pk,))

    assert result.successful()
    trade = Trade.objects.get(pk=live_trade.pk)
    assert (trade.status, trade.needs_operator) == (Trade.Status.PENDING, True)
    assert "Binance refused" in flag_reason(trade) and "-2015" in flag_reason(trade)
    [line] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"trade {trade.pk}: cancel verification gave up" in line.getMessage()
    assert "k" * 64 not in caplog.text


class TestCountdownsStayInsideTheVisibilityWindow:
    """Under Redis a message held past visibility_timeout is handed out again (once per window) while a worker still
    holds it: no countdown of ours is longer than CELERY_MAX_COUNTDOWN_SEC."""

    @pytest.fixture
    def sent(self, monkeypatch, settings):
        settings.CELERY_MAX_COUNTDOWN_SEC = 540
        sent = []
        monkeypatch.setattr(tasks.entry_timeout, "apply_async", lambda args, **opts: sent.append((args, opts)))
        return sent

    def test_a_long_entry_timeout_is_taken_in_hops_and_fires_when_due(self, sent, monkeypatch, account):
        trade = TradeFactory(account=account)
        tasks.schedule_entry_timeout(trade.pk, 1500)
        [(args, opts)] = sent
        assert opts["countdown"] == 540 and opts["kwargs"]["due_at"] == pytest.approx(time.time() + 1500, abs=5)

        cancels = []
        monkeypatch.setattr(tasks, "cancel_and_verify", lambda trade_id: cancels.append(trade_id))
        tasks.entry_timeout(trade.pk, **opts["kwargs"])  # the first hop: not due yet, the next hop is sent
        assert cancels == [] and sent[1][1]["countdown"] == 540
        tasks.entry_timeout(trade.pk, due_at=time.time() - 1)  # the last hop
        assert cancels == [trade.pk]

    def test_a_short_entry_timeout_is_one_message(self, sent, account):
        tasks.schedule_entry_timeout(7, 30)
        assert sent == [((7,), {"countdown": 30})]

    def test_a_retry_after_longer_than_the_window_is_capped(self, settings):
        settings.CELERY_MAX_COUNTDOWN_SEC = 540
        assert 500 <= tasks.capped_countdown(7200, what="test") <= 540
        assert tasks.capped_countdown(120, what="test") == 120
        settings.CELERY_MAX_COUNTDOWN_SEC = None  # the filesystem broker: no window
        assert tasks.capped_countdown(7200, what="test") == 7200


def test_a_cancel_retry_after_a_long_ban_is_capped(monkeypatch, settings, account):
    settings.CELERY_MAX_COUNTDOWN_SEC = 420
    trade = TradeFactory(account=account)
    monkeypatch.setattr(
        services,
        "cancel_trade_order",
        lambda trade, actor="": (_ for _ in ()).throw(RateLimited(-1003, "banned", 418, retry_after=7200, banned=True)),
    )
    sent = []
    monkeypatch.setattr(tasks.cancel_order, "apply_async", lambda *args, **opts: sent.append(opts))
    tasks.cancel_order.push_request(
        id="c1", args=(trade.pk,), kwargs={}, retries=0, called_directly=False, delivery_info={}
    )
    try:
        with pytest.raises(Retry):
            tasks.cancel_order.run(trade.pk)
    finally:
        tasks.cancel_order.pop_request()

    [options] = sent
    assert 380 <= options["countdown"] <= 420


def test_a_cancel_chain_without_an_operator_carries_no_actor_argument(monkeypatch):
    """Messages an older worker can still run during a rolling deploy: `actor` only when there is one."""
    sent = []
    monkeypatch.setattr("celery.canvas._chain.apply_async", lambda self, *a, **kw: sent.append(self) or _Id())
    tasks.cancel_and_verify(5)
    tasks.cancel_and_verify(6, "desk")
    plain, by_operator = ([step.kwargs for step in chain.tasks] for chain in sent)
    assert plain == [{}, {}] and by_operator == [{"actor": "desk"}, {"actor": "desk"}]


class _Id:
    id = "chain-id"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fan_out", "task", "field"),
    [
        ("reconcile_all_accounts", "reconcile_account", "last_reconcile_at"),
        ("sync_all_positions", "sync_positions", "last_position_sync_at"),
    ],
)
def test_the_beat_sends_the_least_recently_done_accounts_first(make_account, monkeypatch, fan_out, task, field):
    """When one IP's budget cannot cover every account in a minute, whoever it refused goes first at the next beat
    (instead of the same accounts every minute)."""
    from datetime import timedelta

    from django.utils import timezone

    from reconciliation.models import AccountSyncState

    recent, never, oldest, middle = (make_account() for _ in range(4))
    now = timezone.now()
    for account, ago in ((recent, 10), (oldest, 300), (middle, 100)):
        AccountSyncState.objects.update_or_create(account=account, defaults={field: now - timedelta(seconds=ago)})
    sent = []
    monkeypatch.setattr(getattr(tasks, task), "apply_async", lambda args, *a, **opts: sent.append(args[0]))

    getattr(tasks, fan_out)()

    assert sent == [never.pk, oldest.pk, middle.pk, recent.pk]
