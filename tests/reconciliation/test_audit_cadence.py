"""The beat's audit cadence: an account whose user stream is healthy is audited by REST every RECONCILE_AUDIT_SEC,
every other account every beat; reconciles asked for a reason are never left out."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from reconciliation import tasks
from reconciliation.models import AccountSyncState, ReconcileRun
from reconciliation.positions.sync import PENDING_TRUSTED, sync_positions_with_binance
from reconciliation.reconcile.audit import audit_not_due
from reconciliation.services import reconcile_pending
from tests.factories import TradeFactory
from tests.helpers import entered
from trades.models import Trade

pytestmark = pytest.mark.django_db


def healthy(account, *, audited_ago=60, connected_ago=3600, heartbeat_ago=5, **fields):
    now = timezone.now()
    values = {
        "stream_state": "connected",
        "stream_state_at": now - timedelta(seconds=connected_ago),
        "stream_heartbeat_at": now - timedelta(seconds=heartbeat_ago),
        "last_reconcile_at": now - timedelta(seconds=audited_ago),
        "last_reconcile_report": {"kind": "pending", "outcome": "ok"},
    }
    values.update(fields)
    AccountSyncState.objects.update_or_create(account=account, defaults=values)
    report = values["last_reconcile_report"]
    if values["last_reconcile_at"] is not None and report:  # the run itself, as Report.finish keeps it
        ReconcileRun.objects.create(
            account=account,
            kind=report["kind"],
            reason="beat",
            outcome=report["outcome"],
            started_at=values["last_reconcile_at"],
        )
    return account


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(
        tasks.reconcile_account, "apply_async", lambda args, kwargs, **opts: calls.append((args[0], kwargs["reason"]))
    )
    return calls


def test_a_healthy_stream_audited_recently_is_left_to_its_next_audit(make_account, sent, settings, caplog):
    settings.RECONCILE_AUDIT_SEC = 600
    quiet, plain = healthy(make_account()), make_account()

    assert tasks.reconcile_all_accounts() == 1

    assert sent == [(plain.pk, "beat")]
    assert f"left to their next audit (stream healthy, audited recently): {quiet.pk}" in caplog.text


def test_a_healthy_stream_is_audited_again_at_the_last_beat_before_its_audit_passes_the_interval(
    make_account, sent, settings
):
    """Beats are a minute apart: an audit 541 s old would be 601 s old at the next one, so this beat sends it (the
    time between audits stays within RECONCILE_AUDIT_SEC plus the wait in the queue)."""
    settings.RECONCILE_AUDIT_SEC = 600
    overdue = healthy(make_account(), audited_ago=601)
    due = healthy(make_account(), audited_ago=541)
    healthy(make_account(), audited_ago=539)

    tasks.reconcile_all_accounts()

    assert sorted(sent) == sorted([(overdue.pk, "beat"), (due.pk, "beat")])


@pytest.mark.parametrize(
    "unhealthy",
    [
        {"stream_deaf_since": "now"},  # connected, missing events
        {"heartbeat_ago": 3600},  # the stream process died, "connected" left behind
        {"stream_state": "reconnecting"},
        {"stream_state": ""},  # no stream process at all
        {"connected_ago": 30},  # the socket connected after the last audit: the gap is not covered yet
        {"last_reconcile_report": {"kind": "pending", "outcome": "partial"}},  # stopped early
        {"last_reconcile_report": {"kind": "pending", "outcome": "error"}},  # look-ups failed
        {"last_reconcile_report": {"kind": "deep", "outcome": "ok"}},  # old trades only
        {"last_reconcile_at": None},
    ],
)
def test_an_account_without_a_healthy_stream_or_a_good_recent_audit_keeps_the_minute(
    make_account, sent, settings, unhealthy
):
    settings.RECONCILE_AUDIT_SEC = 600
    if unhealthy.get("stream_deaf_since") == "now":
        unhealthy["stream_deaf_since"] = timezone.now() - timedelta(minutes=5)
    account = healthy(make_account(), **unhealthy)

    assert tasks.reconcile_all_accounts() == 1

    assert sent == [(account.pk, "beat")]


@pytest.mark.parametrize(
    "trade_fields",
    [
        {"exchange_status": "PLACING"},  # placement outcome unknown: no event will come if it was never created
        {"exchange_status": ""},  # not sent yet
        {"status": Trade.Status.FAILED, "exchange_status": "NOT_FOUND", "not_found_recheck_at": "due"},
    ],
)
def test_what_only_a_look_up_can_settle_keeps_the_minute(make_account, sent, settings, trade_fields):
    settings.RECONCILE_AUDIT_SEC = 600
    account = healthy(make_account())
    if trade_fields.get("not_found_recheck_at") == "due":
        trade_fields["not_found_recheck_at"] = timezone.now() - timedelta(seconds=1)
    TradeFactory(account=account, price=Decimal("50000"), **trade_fields)

    tasks.reconcile_all_accounts()

    assert sent == [(account.pk, "beat")]


def test_resting_orders_do_not_keep_the_minute(make_account, sent, settings):
    settings.RECONCILE_AUDIT_SEC = 600
    account = healthy(make_account())
    TradeFactory(account=account, price=Decimal("50000"), exchange_status="NEW")

    assert tasks.reconcile_all_accounts() == 0 and sent == []


def test_the_deep_pass_and_a_zero_interval_leave_nobody_out(make_account, sent, settings):
    account = healthy(make_account())
    settings.RECONCILE_AUDIT_SEC = 600
    tasks.reconcile_all_accounts(deep=True)
    settings.RECONCILE_AUDIT_SEC = 0
    tasks.reconcile_all_accounts()

    assert sent == [(account.pk, "deep"), (account.pk, "beat")]


def test_a_real_ok_reconcile_after_the_socket_connected_counts_as_the_audit(binance, account, settings):
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, last_reconcile_at=None, last_reconcile_report={})
    assert audit_not_due([account.pk]) == {}

    report = reconcile_pending(account, reason="ws_connect")

    assert report["outcome"] == "ok"
    assert list(audit_not_due([account.pk])) == [account.pk]


@pytest.mark.parametrize("reason", ["ws_connect", "cancel", "admin", "command"])
def test_a_reconcile_asked_for_a_reason_runs_on_a_healthy_recently_audited_stream(binance, account, settings, reason):
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account)

    report = tasks.reconcile_account.apply(args=(account.pk,), kwargs={"reason": reason}).get()

    assert report["skipped"] is False and report["reason"] == reason
    assert ReconcileRun.objects.filter(account=account, reason=reason).count() == 1


# --- the periodic position sync follows the same cadence ------------------------------------------------------------


@pytest.fixture
def syncs_sent(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.sync_positions, "apply_async", lambda args, **opts: calls.append(args[0]))
    return calls


def position_synced(account, *, ago=60, outcome=ReconcileRun.Outcome.OK):
    ReconcileRun.objects.create(
        account=account,
        kind=ReconcileRun.Kind.POSITIONS,
        reason="beat",
        outcome=outcome,
        started_at=timezone.now() - timedelta(seconds=ago),
    )
    return account


def test_the_position_sync_leaves_out_a_healthy_stream_synced_within_the_audit_interval(
    make_account, syncs_sent, settings
):
    settings.RECONCILE_AUDIT_SEC = 600
    position_synced(healthy(make_account()))
    plain = position_synced(make_account())  # synced a minute ago too, but no stream: every 5 minutes as before

    assert tasks.sync_all_positions() == 1

    assert syncs_sent == [plain.pk]


@pytest.mark.parametrize(
    "case",
    [
        {"ago": 601},  # the audit is due
        {"outcome": ReconcileRun.Outcome.PARTIAL},  # stopped early by the budget: no audit
        {"outcome": ReconcileRun.Outcome.ERROR},
        {"synced": False},
        {"connected_ago": 30},  # the socket connected after the last sync: its gap is not covered
        {"stream_state": "reconnecting"},
        {"heartbeat_ago": 3600},  # the stream process died
        {"stream_deaf_since": "now"},
    ],
)
def test_the_position_sync_keeps_its_schedule_without_a_healthy_stream_and_a_recent_good_sync(
    make_account, syncs_sent, settings, case
):
    settings.RECONCILE_AUDIT_SEC = 600
    stream = {k: v for k, v in case.items() if k in ("connected_ago", "stream_state", "heartbeat_ago")}
    if case.get("stream_deaf_since") == "now":
        stream["stream_deaf_since"] = timezone.now() - timedelta(minutes=5)
    account = healthy(make_account(), **stream)
    if case.get("synced", True):
        position_synced(account, ago=case.get("ago", 60), outcome=case.get("outcome", ReconcileRun.Outcome.OK))

    assert tasks.sync_all_positions() == 1

    assert syncs_sent == [account.pk]


def test_a_zero_audit_interval_syncs_every_account_s_positions_every_time(make_account, syncs_sent, settings):
    settings.RECONCILE_AUDIT_SEC = 0
    account = position_synced(healthy(make_account()))

    assert tasks.sync_all_positions() == 1 and syncs_sent == [account.pk]


# --- the periodic position sync leaves the pending reconcile to the audit that just did it ---------------------------


def test_a_beat_position_sync_of_a_trusted_account_leaves_the_pending_reconcile_to_the_audit(
    binance, account, settings
):
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account)
    TradeFactory(account=account, price=Decimal("50000"), exchange_status="NEW")  # one pending trade

    trusted = sync_positions_with_binance(account, reason="beat")
    asked = sync_positions_with_binance(account, reason="ws_account_update")  # asked for a reason: reconciles

    assert trusted["outcome"] == "ok" and trusted["extra"][PENDING_TRUSTED] is True and trusted["checked"] == 0
    assert PENDING_TRUSTED not in asked["extra"] and asked["checked"] == 1


@pytest.mark.parametrize("untrusted", [{"audited_ago": 590}, {"stream_state": "reconnecting"}, {"connected_ago": 30}])
def test_a_beat_position_sync_reconciles_first_when_the_audit_would_not_leave_the_account_out(
    binance, account, settings, untrusted
):
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, **untrusted)
    TradeFactory(account=account, price=Decimal("50000"), exchange_status="NEW")

    report = sync_positions_with_binance(account, reason="beat")

    assert PENDING_TRUSTED not in report["extra"] and report["checked"] == 1


def test_a_position_sync_that_left_the_pending_reconcile_out_never_closes_a_trade(binance, account, settings):
    """A trade whose position reads as gone is closed only by a read whose pending trades were just reconciled (a
    fill of a pending trade the stream lost could be what nets the position out)."""
    settings.RECONCILE_AUDIT_SEC = 600
    settings.POSITION_CONFIRM_SEC = 5
    trade = entered(account, "BUY")
    healthy(account)
    binance.control.lag_positions(account.api_key, count=2, mode="omit")
    Trade.objects.filter(pk=trade.pk).update(position_gone_at=timezone.now() - timedelta(seconds=60))

    trusted = sync_positions_with_binance(account, reason="beat")
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.OPEN
    assert trusted["extra"]["unconfirmed"] == 1 and trusted["extra"]["confirm_after"] == 5

    confirming = sync_positions_with_binance(account, reason="confirm_close")
    assert Trade.objects.get(pk=trade.pk).status == Trade.Status.CLOSED and confirming["extra"]["closed"] == 1


# --- a (re)connect's position sync waits for that connection's reconcile ---------------------------------------------


def test_a_reconnect_s_position_sync_waits_until_the_connection_s_reconcile_ended_ok(binance, account, settings):
    """In a reconnect storm the gaps' reconciles come first: the position sync the stream asks for on a (re)connect
    is put off while that connection has had no ok reconcile, a bounded number of times; then it runs, and leaves
    the pending reconcile to the one that ran."""
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, audited_ago=60, connected_ago=30)  # reconnected after the last reconcile
    TradeFactory(account=account, price=Decimal("50000"), exchange_status="NEW")

    wait = tasks.connect_wait_sec(account.pk, "ws_connect", retries=0)
    assert wait is not None and 2 <= wait <= 3  # short at first: a connect's reconcile usually ends within seconds
    late = tasks.connect_wait_sec(account.pk, "ws_connect", retries=tasks.CONNECT_WAIT_TRIES - 1)
    assert late is not None and tasks.CONNECT_WAIT_SEC <= late <= 1.5 * tasks.CONNECT_WAIT_SEC
    assert tasks.connect_wait_sec(account.pk, "ws_connect", retries=tasks.CONNECT_WAIT_TRIES) is None  # bounded
    assert tasks.connect_wait_sec(account.pk, "ws_account_update", retries=0) is None  # only a (re)connect's
    assert not ReconcileRun.objects.filter(account=account, kind=ReconcileRun.Kind.POSITIONS).exists()

    assert reconcile_pending(account, reason="ws_connect")["outcome"] == "ok"
    assert tasks.connect_wait_sec(account.pk, "ws_connect", retries=1) is None
    report = sync_positions_with_binance(account, reason="ws_connect")
    assert report["outcome"] == "ok" and report["extra"][PENDING_TRUSTED] is True and report["checked"] == 0


def test_the_position_sync_task_retries_later_instead_of_running_before_the_connect_reconcile(
    binance, account, settings, monkeypatch
):
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, audited_ago=60, connected_ago=30)
    retried = []

    def retry(*args, **kwargs):
        retried.append(kwargs["countdown"])
        return RuntimeError("retry")

    monkeypatch.setattr(tasks.sync_positions, "retry", retry)
    with pytest.raises(RuntimeError):
        tasks.sync_positions.run(account.pk, reason="ws_connect")

    assert len(retried) == 1 and retried[0] >= 2
    assert not ReconcileRun.objects.filter(account=account, kind=ReconcileRun.Kind.POSITIONS).exists()  # nothing ran


def test_a_reconnect_s_reconcile_is_left_out_once_a_reconcile_started_after_the_connection_ended_ok(
    binance, account, settings
):
    """In a reconnect storm the beat finds every reconnected account due and may reconcile it before the
    connection's own reconcile (refused by the budget, retried) comes back: that one then has nothing to find."""
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, audited_ago=60, connected_ago=30)
    ReconcileRun.objects.filter(account=account).delete()
    before = ReconcileRun.objects.create(
        account=account,
        kind=ReconcileRun.Kind.PENDING,
        reason="beat",
        outcome=ReconcileRun.Outcome.OK,
        started_at=timezone.now() - timedelta(seconds=31),  # started before the connection: it does not cover it
    )
    assert not tasks.connect_reconcile_covered(account.pk, "ws_connect", retries=1)
    assert tasks.reconcile_account.apply(args=(account.pk,), kwargs={"reason": "ws_connect"}).get()["skipped"] is False

    before.delete()
    assert tasks.connect_reconcile_covered(account.pk, "ws_connect", retries=1)  # the run above started after it
    assert not tasks.connect_reconcile_covered(account.pk, "ws_connect", retries=0)  # never the first run
    assert not tasks.connect_reconcile_covered(account.pk, "cancel", retries=1)  # only a connection's own reconcile
    AccountSyncState.objects.filter(account=account).update(stream_deaf_since=timezone.now())
    assert not tasks.connect_reconcile_covered(account.pk, "ws_connect", retries=1)  # only it clears a deaf mark
    AccountSyncState.objects.filter(account=account).update(stream_deaf_since=None, stream_state="reconnecting")
    assert not tasks.connect_reconcile_covered(account.pk, "ws_connect", retries=1)  # connected only


def test_a_refused_run_after_a_good_audit_does_not_make_the_account_due_again(binance, account, settings, sent):
    """A run the budget refused (partial) verified nothing, and takes nothing from the audit before it: the account
    stays left out until that audit's interval ends (else, under pressure, every refused run would call for another
    full reconcile of an account already verified)."""
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, audited_ago=60)
    AccountSyncState.objects.filter(account=account).update(
        last_reconcile_at=timezone.now(), last_reconcile_report={"kind": "pending", "outcome": "partial"}
    )
    ReconcileRun.objects.create(
        account=account, kind="pending", reason="ws_connect", outcome="partial", started_at=timezone.now()
    )

    assert tasks.reconcile_all_accounts() == 0 and sent == []


def test_the_connections_own_reconcile_releases_its_position_sync_but_drops_no_retry(account, settings):
    """The connection's own reconcile starts within moments of the recorded connect (before the clock margin is
    over): it releases the position sync waiting for it, yet is no reason to drop a retried connect reconcile."""
    settings.RECONCILE_AUDIT_SEC = 600
    healthy(account, audited_ago=60, connected_ago=30)
    connected_at = AccountSyncState.objects.get(account=account).stream_state_at
    ReconcileRun.objects.filter(account=account).delete()
    ReconcileRun.objects.create(
        account=account,
        kind=ReconcileRun.Kind.PENDING,
        reason="ws_connect",
        outcome=ReconcileRun.Outcome.OK,
        started_at=connected_at + timedelta(milliseconds=300),
    )
    assert tasks.connect_wait_sec(account.pk, "ws_connect", retries=0) is None
    assert not tasks.connect_reconcile_covered(account.pk, "ws_connect", retries=1)
