"""docs/DESIGN.md "Faults around the stack"'s rows on access and identifiers, on the real stack (the sandbox, two Celery workers, the user stream,
beat; MariaDB and Redis):

- F30: an observer and an operator, logged in through the admin's login form, never see an account's secret or its
  full API key, and cannot change a schedule — beat keeps firing the reconcile after they POST every schedule
  action;
- F36: `open_position` with `client_order_id=""` delivered twice (one message id, as after a redelivery): one trade,
  one order on the exchange;
- F37: client order ids that differ only in case: two trades, two orders (MariaDB's default collation ignores case).
"""

import uuid

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from reconciliation import tasks
from reconciliation.models import ReconcileRun
from tests.access_helpers import logged_in, post_form
from trades.binance_client import BinanceFuturesClient, client_order_id_for
from trades.models import Trade

from .harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAR = 600  # an entry timeout that does not fire during the test
SCHEDULE_ACTIONS = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks")


def placed(trade_filter):
    """Trades matching the filter whose order was sent and answered."""
    return list(Trade.objects.filter(**trade_filter).exclude(exchange_status__in=["", "PLACING"]).order_by("pk"))


def exchange_orders(account, symbol="BTCUSDT"):
    with BinanceFuturesClient.for_account(account) as client:
        return client.get_all_orders(symbol)


def deliveries_done(e2e, task_id):
    """How many deliveries of message `task_id` the workers have finished (their logs)."""
    return sum(e2e.stack.log(name).count(f"open_position[{task_id}] succeeded") for name in ("worker1", "worker2"))


def beat_runs_since(account, moment):
    return ReconcileRun.objects.filter(account=account, reason="beat", started_at__gt=moment).count()


@pytest.mark.parametrize("role", ["observer", "operator"])
def test_f30_view_only_users_never_see_a_secret_and_cannot_change_a_schedule(e2e, role):
    account = e2e.account()
    secret, key = account.api_secret, account.api_key
    client = logged_in(role)

    for url in (
        reverse("admin:trades_account_changelist"),
        reverse("admin:trades_account_change", args=[account.pk]),
        reverse("admin:trades_account_history", args=[account.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert secret not in html and key not in html, url
        assert key[:8] not in html and secret[-8:] not in html, url

    started = timezone.now()
    e2e.start_beat()
    wait_for(lambda: beat_runs_since(account, started) >= 1, message="beat firing the reconcile")
    schedules = list(PeriodicTask.objects.all())
    before = list(PeriodicTask.objects.order_by("pk").values_list("pk", "enabled"))
    changelist = reverse("admin:django_celery_beat_periodictask_changelist")
    assert all(f'value="{action}"' not in client.get(changelist).content.decode() for action in SCHEDULE_ACTIONS)

    for action in SCHEDULE_ACTIONS:
        post_form(
            client, changelist, {"action": action, ACTION_CHECKBOX_NAME: [str(s.pk) for s in schedules], "index": "0"}
        )
    posted = timezone.now()

    assert list(PeriodicTask.objects.order_by("pk").values_list("pk", "enabled")) == before
    # Beat (which re-reads changed schedules) keeps firing the reconcile after the POSTs.
    wait_for(lambda: beat_runs_since(account, posted) >= 2, message="beat still firing after the POSTs")
    e2e.settle()


def test_f36_an_empty_client_order_id_delivered_twice_is_one_trade_and_one_order(e2e):
    account = e2e.account()
    task_id = str(uuid.uuid4())

    for _ in range(2):  # the same message twice, as Redis hands it out again after a worker died before its ack
        tasks.open_position.apply_async(
            (account.pk, "BTCUSDT", "BUY", "0.010", "50000"),
            {"timeout_sec": FAR, "client_order_id": ""},
            task_id=task_id,
        )
    wait_for(lambda: deliveries_done(e2e, task_id) >= 2, message="both deliveries run")
    wait_for(lambda: placed({"account": account}), message="the order placed")

    [trade] = Trade.objects.filter(account=account)
    assert trade.client_order_id == client_order_id_for(task_id)
    orders = exchange_orders(account)
    assert [order["clientOrderId"] for order in orders] == [trade.client_order_id]
    e2e.settle()


def test_f37_ids_that_differ_only_in_case_are_two_trades_and_two_orders(e2e):
    account = e2e.account()
    lower = f"f37-{uuid.uuid4().hex[:16]}"
    ids = [lower, lower.upper()]

    for cid in ids:
        tasks.open_position.delay(account.pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=FAR, client_order_id=cid)
    wait_for(lambda: len(placed({"account": account})) == 2, message="two trades placed")

    trades = placed({"account": account})
    assert sorted(t.client_order_id for t in trades) == sorted(ids)
    for cid in ids:
        assert Trade.objects.get(account=account, client_order_id=cid).client_order_id == cid
    orders = exchange_orders(account)
    assert sorted(order["clientOrderId"] for order in orders) == sorted(ids)
    assert {t.entry_order_id for t in trades} == {order["orderId"] for order in orders}
    e2e.settle()
