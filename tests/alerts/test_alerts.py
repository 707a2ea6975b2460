"""The alert evaluator (causes → Alert rows, one notice per cause, repeats counted, one "resolved"), the send service
and task (Apprise, claim, retries) and the admin's list and test button."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from alerts import causes, evaluator, notify, tasks
from alerts.models import Alert, EvaluatorState
from reconciliation.models import AccountSyncState, OrphanPosition, ReconcileRun, WorkerHeartbeat
from tests.factories import AccountFactory, TradeEventFactory, TradeFactory
from trades import egress
from trades.models import Trade

from .receiver import Receiver

pytestmark = pytest.mark.django_db

RECONCILE_SCHEDULE = "reconcile pending trades (all accounts)"


@pytest.fixture(autouse=True)
def healthy(settings):
    """Beat and the workers run their schedules; no URLs, no base URL unless a test sets them."""
    PeriodicTask.objects.filter(name=RECONCILE_SCHEDULE).update(last_run_at=timezone.now())
    WorkerHeartbeat.objects.create(hostname="worker1@ops", seen_at=timezone.now())
    settings.ALERT_URLS = []
    settings.ADMIN_BASE_URL = ""


class Sent(list):
    def __call__(self, alert_id: int, notice: str) -> None:
        self.append((Alert.objects.get(pk=alert_id).key, notice))


@pytest.fixture
def sent():
    return Sent()


def evaluate(sent):
    return evaluator.evaluate(enqueue=sent)


def streaming(account, **fields):
    now = timezone.now()
    defaults = {"stream_state": "connected", "stream_state_at": now, "stream_heartbeat_at": now, **fields}
    AccountSyncState.objects.update_or_create(account=account, defaults=defaults)


def flagged_trade(**fields):
    trade = TradeFactory(needs_operator=True, **fields)
    streaming(trade.account)
    TradeEventFactory(
        trade=trade, from_status="pending", to_status="pending", payload={"flag": "needs_operator", "reason": "why"}
    )
    return trade


# --- evaluator: fire once, count repeats, resolve once ----------------------------------------------------------------


def test_a_new_cause_fires_once_repeats_are_counted_and_its_end_resolves_once(sent):
    trade = flagged_trade()
    key = f"trade_flagged:{trade.pk}"

    evaluate(sent)
    assert sent == [(key, "firing")]
    evaluate(sent)
    evaluate(sent)
    assert sent == [(key, "firing")]
    alert = Alert.objects.get(key=key)
    assert (alert.status, alert.repeats, alert.account_name, alert.trade_id) == (
        "firing",
        2,
        trade.account.name,
        trade.pk,
    )
    assert "needs an operator: why" in alert.message and trade.account.name in alert.message
    assert alert.admin_path == reverse("admin:trades_trade_change", args=[trade.pk])

    Trade.objects.filter(pk=trade.pk).update(needs_operator=False)
    evaluate(sent)
    evaluate(sent)
    assert sent == [(key, "firing"), (key, "resolved")]
    assert Alert.objects.get(key=key).status == "resolved"
    assert EvaluatorState.objects.get(pk=1).evaluations == 5


def test_a_cause_back_after_it_resolved_fires_again_on_the_same_row(sent):
    trade = flagged_trade()
    evaluate(sent)
    Trade.objects.filter(pk=trade.pk).update(needs_operator=False)
    evaluate(sent)
    Trade.objects.filter(pk=trade.pk).update(needs_operator=True)
    evaluate(sent)
    key = f"trade_flagged:{trade.pk}"
    assert sent == [(key, "firing"), (key, "resolved"), (key, "firing")]
    alert = Alert.objects.get(key=key)
    assert (alert.status, alert.repeats, alert.sent_at, alert.resolved_at) == ("firing", 0, None, None)


def test_an_evaluation_that_loses_the_insert_race_sends_nothing(sent, monkeypatch):
    trade = flagged_trade()
    key = f"trade_flagged:{trade.pk}"
    Alert.objects.create(key=key, kind="trade_flagged", message="sent by the other evaluation")
    monkeypatch.setattr(evaluator, "_existing", lambda keys: {})  # read before the other evaluation's INSERT landed
    evaluate(sent)
    assert sent == []
    assert Alert.objects.get(key=key).repeats == 1


def test_only_one_evaluation_runs_at_a_time(sent):
    flagged_trade()
    assert evaluator._claim("someone-else")
    assert evaluate(sent) == {"skipped": "another evaluation holds the lease"}
    assert sent == [] and not Alert.objects.exists()
    evaluator._release("someone-else")
    evaluate(sent)
    assert len(sent) == 1


def test_a_source_that_fails_to_read_neither_resolves_nor_repeats_its_alerts(sent, monkeypatch):
    trade = flagged_trade()
    evaluate(sent)

    def broken():
        raise RuntimeError("database hiccup")
        yield  # a generator, like the others

    monkeypatch.setattr(causes, "SOURCES", [broken, *causes.SOURCES[1:]])
    monkeypatch.setitem(causes.KINDS_OF, "broken", {"trade_flagged"})
    Trade.objects.filter(pk=trade.pk).update(needs_operator=False)
    evaluate(sent)
    assert Alert.objects.get(key=f"trade_flagged:{trade.pk}").status == "firing"
    assert len(sent) == 1


def test_enqueueing_with_the_broker_down_never_breaks_the_evaluation(monkeypatch, django_capture_on_commit_callbacks):
    flagged_trade()

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.send_alert, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluator.evaluate()["fired"] == 1
    alert = Alert.objects.get()
    assert alert.sent_at is None and alert.last_error == "not queued (broker unavailable): firing"

    queued = []
    monkeypatch.setattr(tasks.send_alert, "delay", lambda *args: queued.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluator.evaluate()["requeued"] == 1  # the broker is back: the next evaluation queues it
    with django_capture_on_commit_callbacks(execute=True):
        evaluator.evaluate()
    assert queued == [(alert.pk, "firing")]
    assert Alert.objects.get().last_error == ""


# --- the causes ---------------------------------------------------------------------------------------------------------


def test_an_open_orphan_fires_and_resolves_when_it_is_no_longer_open(sent):
    account = AccountFactory()
    streaming(account)
    orphan = OrphanPosition.objects.create(
        account=account, symbol="ETHUSDT", quantity=Decimal("-0.5"), exchange_position=Decimal("-0.5")
    )
    evaluate(sent)
    alert = Alert.objects.get(key=f"orphan:{orphan.pk}")
    assert account.name in alert.message and "ETHUSDT" in alert.message
    OrphanPosition.objects.filter(pk=orphan.pk).update(status=OrphanPosition.Status.DISMISSED)
    evaluate(sent)
    assert sent == [(alert.key, "firing"), (alert.key, "resolved")]


def test_a_stream_down_or_deaf_longer_than_its_grace_fires(sent, settings):
    settings.HEALTH_STREAM_GRACE_SEC = 60
    now = timezone.now()
    down, deaf_long, deaf_new, new_account, ok = (AccountFactory() for _ in range(5))
    streaming(down, stream_state="reconnecting", stream_state_at=now - timedelta(seconds=120))
    streaming(deaf_long, stream_deaf_since=now - timedelta(seconds=90))
    streaming(deaf_new, stream_deaf_since=now - timedelta(seconds=5))
    streaming(ok)
    evaluate(sent)
    assert sorted(key for key, _ in sent) == sorted([f"stream_down:{down.pk}", f"stream_down:{deaf_long.pk}"])
    # The reconnect a deaf mark triggers is not "down" either, within the grace.
    streaming(deaf_new, stream_deaf_since=now - timedelta(seconds=5), stream_state="reconnecting")
    evaluate(sent)
    assert f"stream_down:{deaf_new.pk}" not in {key for key, _ in sent}
    # A deaf stream whose process died is down at once.
    streaming(deaf_new, stream_deaf_since=now, stream_heartbeat_at=now - timedelta(minutes=10))
    evaluate(sent)
    assert (f"stream_down:{deaf_new.pk}", "firing") in sent
    assert "deaf" in Alert.objects.get(key=f"stream_down:{deaf_long.pk}").message
    assert new_account.pk  # never streamed, created moments ago: not yet


def test_a_429_or_418_on_an_egress_fires_until_its_retry_after(sent):
    account = AccountFactory()
    streaming(account)
    now_ms = int(time.time() * 1000)
    egress.shared_budget().mark_limited("default@fapi.binance.com", now_ms + 60_000, banned=True)
    evaluate(sent)
    alert = Alert.objects.get(key="egress_limited:default@fapi.binance.com")
    assert "418 IP ban" in alert.message and account.name in alert.message
    egress.shared_budget().clear()
    evaluate(sent)
    assert sent == [(alert.key, "firing"), (alert.key, "resolved")]


def test_beat_or_workers_not_running_their_schedules_fire(sent):
    PeriodicTask.objects.filter(name=RECONCILE_SCHEDULE).update(last_run_at=timezone.now() - timedelta(hours=1))
    WorkerHeartbeat.objects.all().delete()
    evaluate(sent)
    assert sorted(sent) == [("beat_stale", "firing"), ("workers_stale", "firing")]
    assert "no worker" in Alert.objects.get(key="workers_stale").message


def test_reconciles_that_stopped_early_several_runs_in_a_row_fire(sent, settings):
    settings.ALERT_STOPPED_EARLY_RUNS = 3
    account = AccountFactory()
    streaming(account)

    def run(outcome, ago):
        ReconcileRun.objects.create(
            account=account,
            kind="pending",
            reason="beat",
            outcome=outcome,
            started_at=timezone.now() - timedelta(seconds=ago),
            report={"weight_used": 1900},
        )

    run("partial", 50)
    run("partial", 40)
    run("skipped", 35)  # a skipped run does not break the row
    run("partial", 30)
    evaluate(sent)
    assert sent == [(f"reconcile_stopped_early:{account.pk}", "firing")]
    run("ok", 10)
    evaluate(sent)
    assert sent[-1] == (f"reconcile_stopped_early:{account.pk}", "resolved")


def test_a_correction_of_a_failed_trade_is_sent_once_and_never_resolved_aloud(sent, settings):
    settings.ALERT_CORRECTION_LOOKBACK_SEC = 3600
    trade = TradeFactory(status=Trade.Status.OPEN)
    streaming(trade.account)
    TradeEventFactory(trade=trade, from_status="pending", to_status="failed")  # not a correction
    event = TradeEventFactory(trade=trade, from_status="failed", to_status="open", source="reconcile")
    evaluate(sent)
    evaluate(sent)
    assert sent == [(f"correction:{event.pk}", "firing")]
    assert "was failed and is now open" in Alert.objects.get().message

    settings.ALERT_CORRECTION_LOOKBACK_SEC = 0  # the event has left the look-back window
    evaluate(sent)
    assert Alert.objects.get().status == "resolved"
    assert sent == [(f"correction:{event.pk}", "firing")]  # no "resolved" for an event


def test_no_message_ever_holds_an_api_secret(sent):
    trade = flagged_trade()
    OrphanPosition.objects.create(account=trade.account, symbol="X", quantity=1, exchange_position=1)
    evaluate(sent)
    for alert in Alert.objects.all():
        assert trade.account.api_secret not in alert.message and trade.account.api_key not in alert.message


# --- sending ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def receiver(settings):
    with Receiver() as receiver:
        settings.ALERT_URLS = [receiver.url]
        yield receiver


def fired_alert(sent) -> Alert:
    flagged_trade()
    evaluate(sent)
    return Alert.objects.get()


def test_a_notice_is_delivered_once_with_the_admin_link(sent, receiver, settings):
    settings.ADMIN_BASE_URL = "https://ops.example.com/"
    alert = fired_alert(sent)
    assert notify.send_notice(alert.pk, "firing") == "sent"
    assert notify.send_notice(alert.pk, "firing") == "nothing_to_do"
    assert notify.send_notice(alert.pk, "resolved") == "nothing_to_do"  # not resolved yet
    [message] = receiver.messages()
    assert message.startswith(f"FIRING {alert.key}: trade {alert.trade_id} ")
    assert message.endswith(f" — https://ops.example.com/admin/trades/trade/{alert.trade_id}/change/")
    assert "\n" not in message

    Trade.objects.update(needs_operator=False)
    evaluate(sent)
    assert notify.send_notice(alert.pk, "resolved") == "sent"
    assert notify.send_notice(alert.pk, "resolved") == "nothing_to_do"
    assert receiver.messages()[1].startswith(f"RESOLVED {alert.key}: ")
    alert.refresh_from_db()
    assert alert.sent_at and alert.resolved_sent_at and alert.claim_until is None


def test_without_alert_urls_alerts_are_recorded_not_sent(sent):
    alert = fired_alert(sent)
    assert notify.send_notice(alert.pk, "firing") == "not_configured"
    alert.refresh_from_db()
    assert alert.sent_at is None and "ALERT_URLS" in alert.last_error


def test_a_firing_notice_whose_cause_cleared_before_it_was_sent_is_dropped(sent, receiver):
    alert = fired_alert(sent)
    Trade.objects.update(needs_operator=False)
    evaluate(sent)
    assert notify.send_notice(alert.pk, "firing") == "nothing_to_do"
    assert notify.send_notice(alert.pk, "resolved") == "nothing_to_do"  # nobody was told it fired
    assert receiver.bodies == []


def test_a_send_in_flight_makes_another_wait(sent, receiver):
    alert = fired_alert(sent)
    Alert.objects.filter(pk=alert.pk).update(claim_until=timezone.now() + timedelta(seconds=60))
    with pytest.raises(notify.Busy):
        notify.send_notice(alert.pk, "firing")


def test_a_failed_delivery_releases_the_claim_and_the_task_retries_until_it_lands(sent, receiver, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    alert = fired_alert(sent)
    receiver.status = 500
    calls = []
    real = notify.deliver

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            receiver.status = 200
        return real(*args, **kwargs)

    notify.deliver, saved = flaky, notify.deliver
    try:
        result = tasks.send_alert.apply(args=(alert.pk, "firing"))
    finally:
        notify.deliver = saved
    assert result.get() == "sent"
    assert len(calls) == 3  # two failures retried with backoff, then delivered
    assert len(receiver.bodies) == 3  # every attempt reached the endpoint; only the last was accepted
    alert.refresh_from_db()
    assert alert.sent_at is not None and alert.last_error == ""


def test_a_failed_delivery_is_recorded(sent, receiver):
    alert = fired_alert(sent)
    receiver.status = 500
    with pytest.raises(notify.DeliveryFailed):
        notify.send_notice(alert.pk, "firing")
    alert.refresh_from_db()
    assert alert.claim_until is None and alert.sent_at is None and "DeliveryFailed" in alert.last_error


def test_the_send_task_retries_on_a_failed_delivery():
    assert notify.DeliveryFailed in tasks.send_alert.autoretry_for
    assert tasks.send_alert.max_retries and tasks.send_alert.retry_backoff


# --- admin -----------------------------------------------------------------------------------------------------------


def test_the_admin_lists_alerts_read_only_with_a_test_button(sent, admin_client_logged_in):
    fired_alert(sent)
    page = admin_client_logged_in.get(reverse("admin:alerts_alert_changelist"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "trade_flagged:" in body and "Send a test alert" in body
    assert admin_client_logged_in.get(reverse("admin:alerts_alert_add")).status_code == 403


def test_the_test_button_without_alert_urls_says_so(admin_client_logged_in):
    page = admin_client_logged_in.post(reverse("admin:alerts_alert_send_test"), follow=True)
    assert "ALERT_URLS is not set" in page.content.decode()


def test_the_test_button_sends_through_the_urls(admin_client_logged_in, receiver, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    page = admin_client_logged_in.post(reverse("admin:alerts_alert_send_test"), follow=True)
    assert "A test alert is queued for 1 notification URL" in page.content.decode()
    [message] = receiver.messages()
    assert message.startswith("TEST alert from tradeops")


def test_an_observer_sees_alerts_but_cannot_send_a_test(client, django_user_model):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("obs", password="pw-for-tests-only", is_staff=True)
    user.groups.add(Group.objects.get(name="observers"))
    client.force_login(user)
    page = client.get(reverse("admin:alerts_alert_changelist"))
    assert page.status_code == 200 and "Send a test alert" not in page.content.decode()
    assert client.post(reverse("admin:alerts_alert_send_test")).status_code == 403


def test_two_evaluations_at_once_send_one_notice(mysql_only, transactional_db, settings):
    """Two evaluations (two beat ticks on two workers) reading the same causes at the same moment, past the lease:
    the unique key lets one INSERT win; only it enqueues."""
    import threading

    from django.db import connection

    trade = flagged_trade()
    found = {cause.key: cause for cause in causes.flagged_trades()}
    barrier, results, errors = threading.Barrier(2), [], []

    def one() -> None:
        try:
            sent = Sent()
            barrier.wait(timeout=10)
            evaluator.apply_causes(found, enqueue=sent)
            results.append(sent)
        except Exception as exc:  # noqa: BLE001 — any failure in the racing thread is reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(len(sent) for sent in results) == [0, 1]
    assert Alert.objects.get(key=f"trade_flagged:{trade.pk}").status == "firing"


def test_the_evaluation_schedule_exists():
    task = PeriodicTask.objects.get(name="evaluate alerts")
    assert (task.task, task.interval.every, task.enabled) == ("alerts.tasks.evaluate_alerts", 15, True)
