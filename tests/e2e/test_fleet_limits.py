"""DESIGN §5 F27 on the real stack: Binance limits weight per IP, so a 429 or 418 seen by one process stops every
process on that IP (two workers, the user stream, the test process) until Retry-After — none of them sends."""

import time

import pytest

from reconciliation import tasks
from reconciliation.models import ReconcileRun
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import RateLimited
from trades.models import Trade

from .harness import wait_for
from .test_fault_matrix import filled_unseen, status_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def run_of(account, **filters):
    return ReconcileRun.objects.filter(account=account, reason="e2e", **filters).order_by("pk").first()


def refused_here(account) -> RateLimited:
    """The test process asks Binance once: it must be refused before sending."""
    with BinanceFuturesClient.for_account(account) as client, pytest.raises(RateLimited) as caught:
        client.get_open_orders("BTCUSDT")
    assert caught.value.status is None and client.http_calls == 0
    return caught.value


def test_a_429_in_one_worker_pauses_every_process_on_the_ip_until_retry_after(e2e):
    first, second = e2e.account(), e2e.account()
    trades = filled_unseen(e2e, first, 2) + filled_unseen(e2e, second, 2)
    control = e2e.control
    control.inject_fault("/fapi/v1/order", "429", count=1, method="GET", retry_after=6)

    tasks.reconcile_account.delay(first.pk, reason="e2e")
    wait_for(lambda: run_of(first, outcome=ReconcileRun.Outcome.PARTIAL), message="the 429 stops the first run")
    sent = control.stats()["total_requests"]
    assert 0 < refused_here(second).retry_after <= 6

    tasks.reconcile_account.delay(second.pk, reason="e2e")  # on whichever worker: it must not send either
    paused = wait_for(lambda: run_of(second, outcome=ReconcileRun.Outcome.PARTIAL), message="the second run waits")
    assert paused.report["http_calls"] == 0 and paused.report["stopped_early"]
    assert control.stats()["total_requests"] == sent  # nobody sent anything while the IP was limited

    wait_for(
        lambda: all(status_of(t) == Trade.Status.OPEN for t in trades),
        timeout=60,
        message="both accounts reconciled once Retry-After passed (the tasks retried by themselves)",
    )
    assert control.stats()["statuses"].get("429", 0) == 1 and "418" not in control.stats()["statuses"]
    for account in (first, second):
        control.resume_events(account.api_key)
    e2e.settle()


def test_a_418_ban_is_honoured_by_the_workers_the_user_stream_and_the_admin(e2e):
    first, second = e2e.account(), e2e.account()
    trades = filled_unseen(e2e, first, 1) + filled_unseen(e2e, second, 1)
    control = e2e.control
    ban_sec = 8
    control.inject_fault("/fapi/v1/order", "418", count=1, method="GET", retry_after=ban_sec)

    tasks.reconcile_account.delay(first.pk, reason="e2e")
    wait_for(lambda: run_of(first, outcome=ReconcileRun.Outcome.PARTIAL), message="the 418 stops the first run")
    banned_at, sent = time.monotonic(), control.stats()["total_requests"]
    assert refused_here(second).banned  # an admin action in this process: not sent

    stream_log = len(e2e.stack.log("stream"))
    control.drop_connections(second.api_key)  # the stream must reconnect: a listenKey POST
    wait_for(
        lambda: "banned" in e2e.stack.log("stream")[stream_log:],
        timeout=ban_sec,
        message="the user stream held its listenKey call back",
    )
    tasks.reconcile_account.delay(second.pk, reason="e2e")
    paused = wait_for(
        lambda: run_of(second, outcome=ReconcileRun.Outcome.PARTIAL),
        timeout=ban_sec,
        message="a worker held its reconcile back",
    )
    assert paused.report["http_calls"] == 0
    if time.monotonic() - banned_at < ban_sec - 1:  # still inside the ban: nobody has sent anything
        assert control.stats()["total_requests"] == sent

    e2e.wait_streaming(second, timeout=30)  # after the ban: everyone resumes by themselves
    wait_for(lambda: all(status_of(t) == Trade.Status.OPEN for t in trades), timeout=60, message="reconciled")
    assert control.stats()["statuses"].get("418", 0) == 1
    for account in (first, second):
        control.resume_events(account.api_key)
    e2e.settle()
