"""The reconcile lease (reconciliation/reconcile/leases.py) is timed by the database's clock, not the caller's."""

from datetime import timedelta

import pytest
from django.utils import timezone

from reconciliation.models import AccountSyncState
from reconciliation.reconcile import leases
from reconciliation.reconcile.leases import account_lease
from tests.factories import AccountFactory
from trades.db import db_now

pytestmark = pytest.mark.django_db


def test_a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease(monkeypatch):
    account = AccountFactory()
    with account_lease(account.pk, seconds=60) as first:
        assert first
        # This worker's clock is an hour ahead: by it, the first lease ran out long ago. By the database's, it did not.
        monkeypatch.setattr(timezone, "now", lambda: db_now() + timedelta(hours=1))
        with account_lease(account.pk) as second:
            assert not second


def test_the_expiry_is_written_on_the_database_clock(monkeypatch):
    account = AccountFactory()
    monkeypatch.setattr(timezone, "now", lambda: db_now() - timedelta(hours=1))  # a clock an hour behind
    before = db_now()
    with account_lease(account.pk, seconds=60) as held:
        assert held
        until = AccountSyncState.objects.get(account=account).lease_until
        assert before + timedelta(seconds=59) <= until <= db_now() + timedelta(seconds=61)


def test_an_expired_lease_is_taken_whatever_the_callers_clock_says(monkeypatch):
    account = AccountFactory()
    leases.sync_state(account.pk)
    AccountSyncState.objects.filter(account=account).update(
        lease_owner="dead", lease_until=db_now() - timedelta(seconds=1)
    )
    monkeypatch.setattr(timezone, "now", lambda: db_now() - timedelta(hours=1))  # by this clock it is still live
    with account_lease(account.pk) as held:
        assert held
