"""docs/DESIGN.md "What Binance really does" rows F17 and F20 on the real stack (the sandbox, two Celery workers, the user stream, MariaDB, Redis):
the product's guards against Binance behaving worse than it documents.

F17: a socket that is connected and silent (the sandbox drops the account's events, as Binance does for a stream
URL without `&events=`) is noticed from the fills REST finds that it never delivered — counted in /metrics, marked
deaf in /health/ and the admin — and reconnected, while the fills are still recorded by REST; a stream that delivers
its fills is never marked deaf.
F20: Binance answers -2013 for minutes for an order that exists (after a 503 placement): the trade fails as "not
found on exchange" past the grace, and the re-check schedule corrects it, audited, once the order shows up.
"""

import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from django.urls import reverse
from django.utils import timezone

from reconciliation import services, tasks
from reconciliation.models import AccountSyncState, ReconcileRun, StreamMiss
from reconciliation.orders import rules
from reconciliation.stream.guard import CLOCK_MARGIN
from trades.models import Trade, TradeEvent

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LAG_SEC = 1  # USER_STREAM_DEAF_LAG_SEC, compressed
RECHECK_SEC = (8, 16)  # NOT_FOUND_RECHECK_SEC, compressed: the first re-check comes after the not-found window
NOT_FOUND_WINDOW_MS = 10_000  # -2013 for this long after placing; the grace (harness.FAST) is 3 s
STACK_ENV = {
    "USER_STREAM_DEAF_LAG_SEC": str(LAG_SEC),
    "USER_STREAM_DEAF_AFTER": "3",
    "NOT_FOUND_RECHECK_SEC": ",".join(map(str, RECHECK_SEC)),
}
FAR = 600  # an entry timeout that does not fire during the test


@pytest.fixture
def client(client, django_user_model):
    """/health/'s details are for staff (or the METRICS_TOKEN): read them as a logged-in staff user."""
    client.force_login(
        django_user_model.objects.create_user("health-reader", password="pw-for-tests-only", is_staff=True)
    )
    return client


@pytest.fixture
def guards(e2e, settings):
    """The test process (in-process reconciles, /health/, /metrics) runs with the stack's settings."""
    settings.USER_STREAM_DEAF_LAG_SEC = LAG_SEC
    settings.USER_STREAM_DEAF_AFTER = 3
    settings.NOT_FOUND_RECHECK_SEC = RECHECK_SEC
    settings.METRICS_CACHE_SEC = 0
    return e2e


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def open_position(e2e, account, *, placed=True):
    """The bot's flow: enqueue open_position; the trade once its placement was attempted (and, if `placed`, its
    order rests on the exchange)."""
    cid = f"e2e-{uuid.uuid4().hex[:20]}"
    tasks.open_position.delay(account.pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=FAR, client_order_id=cid)
    sent = ["", "PLACING"] if placed else [""]
    return wait_for(
        lambda: Trade.objects.filter(client_order_id=cid).exclude(exchange_status__in=sent).first(),
        message=f"{cid} placed",
    )


def exchange_order(e2e, trade) -> dict:
    return e2e.control.get_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id)


def fill(e2e, trade) -> int:
    """Fill the trade's order on the exchange; Binance's updateTime of the fill."""
    return e2e.control.fill_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id)[
        "updateTime"
    ]


def sync_state(account) -> AccountSyncState:
    return AccountSyncState.objects.get(account=account)


def connection_older_than_the_clock_margin(account) -> bool:
    state = sync_state(account)
    return state.stream_state == "connected" and timezone.now() > state.stream_state_at + CLOCK_MARGIN


def metric(client, name: str, account) -> float | None:
    for line in client.get("/metrics").content.decode().splitlines():
        if line.startswith(f'{name}{{account="{account.name}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def fills_by(trades, source: str) -> bool:
    return all(TradeEvent.objects.filter(trade=t, to_status="open", source=source).exists() for t in trades)


def test_f17_a_connected_stream_that_stays_silent_is_detected_as_deaf_and_reconnected(
    guards, client, admin_client_logged_in
):
    e2e = guards
    account = e2e.account()
    wait_for(lambda: connection_older_than_the_clock_margin(account), message="a connection older than the margin")
    trades = [open_position(e2e, account) for _ in range(3)]
    e2e.control.pause_events(account.api_key)  # connected, and silent from here on
    last_fill = from_ms(max(fill(e2e, trade) for trade in trades))
    # The stream process lived on after the fills (its heartbeat), and the lag has passed: the socket had its chance.
    wait_for(
        lambda: (
            sync_state(account).stream_heartbeat_at > last_fill
            and timezone.now() > last_fill + timedelta(seconds=LAG_SEC)
        ),
        message="heartbeat and lag past the fills",
    )
    assert all(Trade.objects.get(pk=t.pk).status == Trade.Status.PENDING for t in trades)
    ws_connects = ReconcileRun.objects.filter(account=account, reason="ws_connect", kind=ReconcileRun.Kind.PENDING)
    connects_before = ws_connects.count()

    stream = e2e.stack.procs["stream"].pid
    os.killpg(stream, signal.SIGSTOP)  # hold the stream still while the deaf mark is looked at
    try:
        report = wait_for(
            lambda: (r := services.reconcile_pending(account, reason="beat"))["skipped"] is False and r,
            message="a reconcile that ran",
        )

        assert report["opened"] == 3 and report["missed_events"] == 3
        assert fills_by(trades, "reconcile")  # the fills are recorded by REST all the same
        assert StreamMiss.objects.filter(account=account).count() == 3
        health = client.get("/health/")
        assert health.status_code == 503 and health.json()["checks"]["user_stream"] == "error"
        assert health.json()["details"]["user_stream"][account.name]["deaf_since"]
        assert metric(client, "tradeops_user_stream_missed_events_total", account) == 3
        assert metric(client, "tradeops_user_stream_deaf", account) == 1
        page = admin_client_logged_in.get(reverse("admin:trades_account_changelist")).content.decode()
        assert "DEAF (missing events)" in page
    finally:
        os.killpg(stream, signal.SIGCONT)

    # The stream process notices the mark and reconnects; the reconnect's reconcile finds no miss and clears it.
    wait_for(lambda: "event=deaf" in e2e.stack.log("stream"), message="the stream reconnecting the deaf socket")
    wait_for(
        lambda: ws_connects.count() > connects_before and sync_state(account).stream_deaf_since is None,
        message="the reconnect's reconcile cleared the mark",
    )
    wait_for(
        lambda: client.get("/health/").json()["details"]["user_stream"][account.name]["ok"],
        message="/health/ ok again for the account",
    )
    assert metric(client, "tradeops_user_stream_deaf", account) == 0
    e2e.control.resume_events(account.api_key)
    e2e.settle()


def test_f17_a_stream_that_delivers_its_fills_is_never_marked_deaf(guards, client):
    e2e = guards
    account = e2e.account()
    wait_for(lambda: connection_older_than_the_clock_margin(account), message="a connection older than the margin")
    trades = [open_position(e2e, account) for _ in range(3)]

    last_fill = from_ms(max(fill(e2e, trade) for trade in trades))

    wait_for(lambda: fills_by(trades, "ws"), message="every fill delivered by the socket")
    # REST audits the account every second from here on. Started only once the socket delivered, so that on a
    # loaded machine a REST pass cannot get to a fill first (which would be no miss either, but proves nothing).
    e2e.start_beat()
    # Past the lag, with the stream alive, two more REST passes over the account find nothing it missed.
    wait_for(
        lambda: sync_state(account).stream_heartbeat_at > last_fill + timedelta(seconds=LAG_SEC),
        message="heartbeat past the lag",
    )
    runs = ReconcileRun.objects.filter(account=account, reason="beat").exclude(outcome=ReconcileRun.Outcome.SKIPPED)
    seen = runs.count()
    wait_for(lambda: runs.count() >= seen + 2, message="two more beat reconciles")
    assert not StreamMiss.objects.filter(account=account).exists()
    assert sync_state(account).stream_deaf_since is None
    assert metric(client, "tradeops_user_stream_missed_events_total", account) == 0
    assert metric(client, "tradeops_user_stream_deaf", account) == 0
    assert client.get("/health/").json()["details"]["user_stream"][account.name]["ok"]
    e2e.settle()


def test_f20_a_2013_that_lasts_fails_the_trade_then_the_recheck_corrects_it_audited(guards):
    e2e = guards
    account = e2e.account()
    e2e.control.pause_events(account.api_key)  # nothing by push: the trade knows only what REST tells it
    e2e.control.set_not_found_window(NOT_FOUND_WINDOW_MS)
    e2e.control.inject_fault("/fapi/v1/order", "503_unknown_placed", method="POST")  # made, answered 503

    trade = open_position(e2e, account, placed=False)
    assert trade.exchange_status == "PLACING"  # outcome unknown: pending, for the reconcile to find
    assert exchange_order(e2e, trade)["status"] == "NEW"  # … and the order exists all along
    e2e.start_beat()

    wait_for(
        lambda: Trade.objects.filter(
            pk=trade.pk, status=Trade.Status.FAILED, status_reason=rules.NOT_FOUND_REASON
        ).exists(),
        message="failed as not found past the grace",
    )
    fill(e2e, trade)  # the order fills while we believe it never existed

    wait_for(
        lambda: Trade.objects.get(pk=trade.pk).status == Trade.Status.OPEN,
        timeout=60,
        message="the re-check corrected it",
    )

    events = list(TradeEvent.objects.filter(trade=trade).order_by("pk"))
    assert [(e.from_status, e.to_status, e.source) for e in events] == [
        ("pending", "failed", "reconcile"),
        ("failed", "open", "reconcile"),
    ]
    assert rules.NOT_FOUND_REASON in events[1].payload["correction"]
    assert ReconcileRun.objects.filter(account=account, report__rechecked__gte=1, report__corrected=1).exists()
    trade.refresh_from_db()
    assert trade.not_found_recheck_at is None and 1 <= trade.not_found_rechecks <= len(RECHECK_SEC)
    e2e.control.set_not_found_window(0)
    e2e.control.resume_events(account.api_key)
    e2e.settle()


AUDIT_SEC = 4  # harness.FAST's RECONCILE_AUDIT_SEC


def test_a_healthy_stream_is_audited_every_reconcile_audit_sec_and_a_stalled_one_every_beat(guards):
    """The beat fires every second. While the account's stream is healthy its REST audits are at least
    RECONCILE_AUDIT_SEC apart; once the stream process stops (its heartbeat goes stale) the beat audits it again
    every time."""
    e2e = guards
    account = e2e.account()
    audits = ReconcileRun.objects.filter(
        account=account, kind=ReconcileRun.Kind.PENDING, outcome=ReconcileRun.Outcome.OK
    )
    beats = audits.filter(reason="beat")
    e2e.start_beat()

    wait_for(lambda: beats.count() >= 2, timeout=40, message="two beat audits of the healthy stream")
    starts = list(audits.order_by("started_at").values_list("started_at", "duration_ms"))
    for (before, took), (after, _) in pairwise(starts):
        # the next audit is sent only once the last one finished RECONCILE_AUDIT_SEC ago, less the lead of one
        # beat (audit_lead_sec: a tenth of the interval here) (one host's clock)
        assert after - (before + timedelta(milliseconds=took)) >= timedelta(seconds=AUDIT_SEC * 0.9 - 0.05)

    stream = e2e.stack.procs["stream"].pid
    os.killpg(stream, signal.SIGSTOP)  # the stream process stalls: its "connected" is no longer trusted
    try:
        stalled_at = timezone.now()
        wait_for(
            lambda: timezone.now() - sync_state(account).stream_heartbeat_at > timedelta(seconds=3 * 0.5 + 10),
            timeout=30,
            message="the stream's heartbeat stale",
        )
        stale = beats.filter(started_at__gt=stalled_at + timedelta(seconds=3 * 0.5 + 10))

        def close_together():
            times = list(stale.order_by("started_at").values_list("started_at", flat=True))
            return any(b - a < timedelta(seconds=AUDIT_SEC - 1) for a, b in pairwise(times))

        wait_for(close_together, timeout=40, message="beat audits less than RECONCILE_AUDIT_SEC apart")
    finally:
        os.killpg(stream, signal.SIGCONT)
    e2e.settle()
