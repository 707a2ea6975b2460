"""A deaf user stream is noticed (reconciliation.stream.guard, docs/DESIGN.md "What Binance really does" F17): order changes REST look-ups find that
the connected socket never delivered are counted, logged, and enough of them mark the stream deaf — in /health/,
/metrics and the admin — and make the stream process reconnect it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from reconciliation import services
from reconciliation.health.checks import check_user_streams
from reconciliation.health.metrics import TradeopsCollector
from reconciliation.models import AccountSyncState, StreamMiss
from reconciliation.stream.guard import StreamWindow
from tests.factories import TradeFactory
from tests.helpers import as_ws, place
from tests.reconciliation.test_apply_order_snapshot import exchange_order
from trades.models import Trade

from .stream_helpers import Recorder, StreamThread, wait_for

pytestmark = pytest.mark.django_db

LAG = timedelta(seconds=10)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture
def no_lag(settings):
    settings.USER_STREAM_DEAF_LAG_SEC = 0
    settings.USER_STREAM_DEAF_AFTER = 3


def connected(account, *, since: datetime | None = None, heartbeat: datetime | None = None, state="connected"):
    """The account's sync state as a live stream process leaves it."""
    now = timezone.now()
    AccountSyncState.objects.update_or_create(
        account=account,
        defaults={
            "stream_state": state,
            "stream_state_at": since or now - timedelta(minutes=5),
            "stream_heartbeat_at": heartbeat or now,
        },
    )


def filled_unseen(binance, account, n=1) -> list[Trade]:
    """n trades whose orders rest, then fill on the exchange; nothing reaches the database by push."""
    trades = [TradeFactory(account=account, price=Decimal("50000")) for _ in range(n)]
    for trade in trades:
        place(trade)
        binance.control.fill_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
    return trades


class TestTheEvidence:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    window = StreamWindow(connected_since=now - timedelta(minutes=10), heartbeat_at=now - timedelta(seconds=1))

    def test_a_change_inside_the_connected_window_older_than_the_lag_is_missed(self):
        assert self.window.missed(ms(self.now - timedelta(seconds=30)), self.now, LAG)

    @pytest.mark.parametrize(
        "what, at, lag",
        [
            ("younger than the lag: may still be on its way", timedelta(seconds=-5), LAG),
            ("before the connection, or within the clock margin after it", timedelta(minutes=-10, seconds=1), LAG),
            ("after the stream process's last heartbeat", timedelta(seconds=-0.5), timedelta(seconds=0.1)),
        ],
    )
    def test_what_is_not_held_against_the_socket(self, what, at, lag):
        assert not self.window.missed(ms(self.now + at), self.now, lag), what

    def test_no_connection_or_no_time_is_no_evidence(self):
        assert not StreamWindow().missed(ms(self.now - timedelta(minutes=1)), self.now, LAG)
        assert not self.window.missed(None, self.now, LAG)


def test_a_fill_rest_finds_that_the_connected_socket_never_delivered_is_a_miss(binance, account, no_lag, caplog):
    connected(account)
    [trade] = filled_unseen(binance, account)
    connected(account, heartbeat=timezone.now())  # the stream process lived on after the fill

    with caplog.at_level(logging.WARNING, logger="reconciliation.user_stream"):
        report = services.reconcile_pending(account, reason="beat")

    assert report["opened"] == 1 and report["missed_events"] == 1
    [miss] = StreamMiss.objects.filter(account=account)
    assert (miss.trade_id, miss.source, miss.exchange_status) == (trade.pk, "reconcile", "FILLED")
    assert [r.levelname for r in caplog.records if "missed_event" in r.getMessage()] == ["WARNING"]
    assert AccountSyncState.objects.get(account=account).stream_deaf_since is None  # one is not deaf


@pytest.mark.parametrize("state", ["reconnecting", "connecting", "stopped", ""])
def test_no_miss_while_the_stream_was_not_connected(binance, account, no_lag, state):
    connected(account, state=state)
    filled_unseen(binance, account)

    assert services.reconcile_pending(account)["missed_events"] == 0


def test_no_miss_for_a_change_after_the_stream_processes_last_heartbeat(binance, account, no_lag):
    """A killed stream process leaves "connected" behind: a fill after its last sign of life is not its miss."""
    connected(account, heartbeat=timezone.now() - timedelta(seconds=5))
    filled_unseen(binance, account)

    assert services.reconcile_pending(account)["missed_events"] == 0


def test_no_miss_for_a_change_younger_than_the_lag(binance, account, settings):
    settings.USER_STREAM_DEAF_LAG_SEC = 60
    connected(account)
    filled_unseen(binance, account)
    connected(account, heartbeat=timezone.now())

    report = services.reconcile_pending(account)

    assert report["opened"] == 1 and report["missed_events"] == 0


def test_no_miss_for_a_change_before_the_connection(binance, account, no_lag):
    """The reconcile a (re)connect triggers finds the fills of the gap: the new socket could not have heard them."""
    filled_unseen(binance, account)
    connected(account, since=timezone.now())

    assert services.reconcile_pending(account, reason="ws_connect")["missed_events"] == 0


def test_a_change_the_socket_delivered_is_no_miss(binance, account, no_lag):
    connected(account)
    [trade] = filled_unseen(binance, account)
    services.apply_order_snapshot(trade, as_ws(exchange_order(trade)), "ws")  # the socket delivered the fill
    connected(account, heartbeat=timezone.now())

    assert services.reconcile_pending(account)["missed_events"] == 0
    assert not StreamMiss.objects.exists()


def test_enough_misses_within_an_hour_mark_the_stream_deaf_once(binance, account, no_lag, caplog):
    connected(account)
    StreamMiss.objects.create(
        account=account,
        detected_at=timezone.now() - timedelta(hours=2),
        source="reconcile",
        exchange_status="FILLED",
        exchange_update_time=1,
        connected_since=timezone.now(),
    )
    filled_unseen(binance, account, n=2)
    connected(account, heartbeat=timezone.now())
    services.reconcile_pending(account)
    assert AccountSyncState.objects.get(account=account).stream_deaf_since is None  # 2 in the hour, 1 older

    filled_unseen(binance, account, n=2)
    connected(account, heartbeat=timezone.now())
    with caplog.at_level(logging.ERROR, logger="reconciliation.user_stream"):
        report = services.reconcile_pending(account)

    assert report["missed_events"] == 2
    assert AccountSyncState.objects.get(account=account).stream_deaf_since is not None
    assert len([r for r in caplog.records if "user_stream deaf " in r.getMessage()]) == 1


def test_the_reconnects_reconcile_clears_the_mark_unless_it_finds_misses(binance, account, no_lag):
    marked_at = timezone.now() - timedelta(seconds=30)
    connected(account, since=timezone.now())
    AccountSyncState.objects.filter(account=account).update(stream_deaf_since=marked_at)

    services.reconcile_pending(account, reason="beat")  # not the reconnect's
    assert AccountSyncState.objects.get(account=account).stream_deaf_since == marked_at

    services.reconcile_pending(account, reason="ws_connect")
    assert AccountSyncState.objects.get(account=account).stream_deaf_since is None


def test_a_verification_after_a_cancel_counts_a_miss_too(binance, account, no_lag):
    connected(account)
    [trade] = filled_unseen(binance, account)
    connected(account, heartbeat=timezone.now())

    result = services.verify_after_cancel(trade)

    assert result["status"] == "open"
    assert StreamMiss.objects.filter(account=account, source="cancel_verify").count() == 1


def test_the_evidence_costs_one_read_per_reconcile_and_none_when_nothing_changed(binance, account, no_lag):
    connected(account)
    filled_unseen(binance, account, n=3)
    connected(account, heartbeat=timezone.now())

    def state_reads(queries):
        return [
            q
            for q in queries
            if q["sql"].startswith("SELECT") and "stream_heartbeat_at" in q["sql"] and "lease_owner" not in q["sql"]
        ]  # the guard's read, not the lease's whole row

    with CaptureQueriesContext(connection) as changed:
        assert services.reconcile_pending(account)["missed_events"] == 3
    with CaptureQueriesContext(connection) as unchanged:
        services.reconcile_pending(account)

    assert len(state_reads(changed.captured_queries)) == 1
    assert state_reads(unchanged.captured_queries) == []


def test_health_metrics_and_admin_show_a_deaf_stream(binance, account, admin_client_logged_in):
    connected(account)
    StreamMiss.objects.create(
        account=account,
        source="reconcile",
        exchange_status="FILLED",
        exchange_update_time=1,
        connected_since=timezone.now(),
    )
    assert check_user_streams()[0]

    AccountSyncState.objects.filter(account=account).update(stream_deaf_since=timezone.now())

    ok, details = check_user_streams()
    assert not ok and details[account.name]["deaf_since"] and not details[account.name]["ok"]
    families = {f.name: f for f in TradeopsCollector(cache_sec=0).collect()}
    assert [
        (s.labels, s.value) for s in families["tradeops_user_stream_missed_events"].samples if s.name.endswith("_total")
    ] == [({"account": account.name}, 1)]
    assert [(s.labels, s.value) for s in families["tradeops_user_stream_deaf"].samples] == [
        ({"account": account.name}, 1)
    ]
    page = admin_client_logged_in.get(reverse("admin:trades_account_changelist")).content.decode()
    assert "DEAF (missing events)" in page


live = pytest.mark.django_db(transaction=True)


@live
def test_the_stream_process_reconnects_a_stream_marked_deaf_and_its_reconcile_clears_the_mark(binance, account):
    recorder = Recorder()
    stream = StreamThread(recorder).start()
    try:
        stream.wait_connected(account.pk)
        wait_for(lambda: AccountSyncState.objects.get(account=account).stream_state == "connected")

        AccountSyncState.objects.filter(account=account).update(stream_deaf_since=timezone.now())

        stream.wait_connected(account.pk, connects=2)
        assert list(stream.stream(account.pk).disconnects) == ["deaf"]
        wait_for(
            lambda: AccountSyncState.objects.get(account=account).stream_deaf_since is None,
            what="the reconnect's reconcile cleared the mark",
        )
        # One reconnect per mark: the new connection is younger than any mark that is left.
        AccountSyncState.objects.filter(account=account).update(stream_deaf_since=timezone.now() - timedelta(minutes=5))
        refreshes = stream.runner.refreshes
        wait_for(lambda: stream.runner.refreshes >= refreshes + 3, what="three account refreshes")
        assert stream.connects(account.pk) == 2
    finally:
        stream.stop()
