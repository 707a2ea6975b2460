"""Fixtures for the end-to-end tests: one stack per session (sandbox, two workers, the user stream), beat per test."""

import json

import pytest
from django.conf import settings as django_settings
from django.test import override_settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from reconciliation import services
from reconciliation.models import ReconcileRun
from tests.factories import AccountFactory
from tradeops.celery import app

from .harness import FAST, Stack, wait_for
from .invariants import assert_invariant, settled

NUMERIC = {k: float(v) if "." in v else int(v) for k, v in FAST.items() if k != "LOG_LEVEL"}


def _e2e_reason():
    engine = django_settings.DATABASES["default"]["ENGINE"]
    if not engine.endswith("mysql") or not django_settings.CELERY_BROKER_URL.startswith("redis"):
        return "end-to-end tests run on MariaDB + Redis: DATABASE_URL=mysql://… CELERY_BROKER_URL=redis://… (.ci/run)"
    return None


@pytest.fixture(scope="module")
def e2e_stack(request, sandbox_server, django_db_setup, tmp_path_factory):
    """Per module, and gone after it: the stack's workers must not consume other tests' tasks. A module's
    STACK_ENV (settings as environment strings) is added to what its processes run with."""
    reason = _e2e_reason()
    if reason:
        pytest.skip(reason)
    app.control.purge()
    stack = Stack(sandbox_server, tmp_path_factory.mktemp("e2e-logs"), env=getattr(request.module, "STACK_ENV", None))
    try:
        for name in ("worker1", "worker2"):
            stack.start_worker(name)
        stack.start_stream()
        for name in ("worker1", "worker2"):
            wait_for(lambda name=name: "ready." in stack.log(name), timeout=60, message=f"{name} ready")
        yield stack
    finally:
        stack.stop_all()
        app.control.purge()
        print(f"\ne2e process logs: {stack.log_dir}")


class E2E:
    def __init__(self, stack, exchange):
        self.stack = stack
        self.control = exchange.control
        self.accounts = []

    def account(self, **fields):
        """A fresh exchange account and its row, returned once the user stream has connected it and the reconcile
        and the position sync (which reconciles too) that connect enqueues have run. Otherwise they land at a random
        moment inside the test and can do the very work the test wants a later path (beat, an explicit reconcile
        under a lock, …) to do."""
        creds = self.control.create_account()
        account = AccountFactory(api_key=creds["api_key"], api_secret=creds["api_secret"], **fields)
        self.accounts.append(account)
        self.wait_streaming(account)
        for kind in (ReconcileRun.Kind.PENDING, ReconcileRun.Kind.POSITIONS):
            wait_for(
                lambda kind=kind: (
                    ReconcileRun.objects.filter(account=account, reason="ws_connect", kind=kind)
                    .exclude(outcome=ReconcileRun.Outcome.SKIPPED)
                    .exists()
                ),
                timeout=30,
                message=f"the stream's first {kind} run for {account.name}",
            )
        return account

    def wait_streaming(self, account, timeout=20):
        """The user stream has a live connection for the account (it polls for new accounts)."""
        wait_for(
            lambda: self.control.listen_keys(account.api_key)["connections"] >= 1,
            timeout=timeout,
            message=f"stream connected for {account.name}",
        )

    def start_beat(self, every=1):
        """celery beat firing reconcile_all_accounts every `every` seconds (the schedule a deployment runs every
        60 s, compressed)."""
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        PeriodicTask.objects.update_or_create(
            name="e2e reconcile",
            defaults={
                "task": "reconciliation.tasks.reconcile_all_accounts",
                "interval": interval,
                "kwargs": json.dumps({}),
                "enabled": True,
            },
        )
        self.stack.start_beat()

    def settle(self, accounts=None, timeout=60):
        """docs/DESIGN.md "Fault matrix": after the fault stops and one reconcile has run, the invariant holds. Wait (with a deadline)
        until every trade agrees with the exchange, run one position sync per account (what beat does every 5 min),
        then check the whole invariant."""
        accounts = accounts or self.accounts
        wait_for(lambda: settled(self.control, accounts), timeout=timeout, interval=0.3, message="quiescence")
        for account in accounts:  # a worker may hold the account's lease for a moment: skipped means try again
            wait_for(
                lambda account=account: not services.sync_positions_with_binance(account, reason="e2e")["skipped"],
                timeout=timeout,
                interval=0.3,
                message=f"a position sync of {account.name}",
            )
        wait_for(lambda: settled(self.control, accounts), timeout=timeout, interval=0.3, message="quiescence")
        assert_invariant(self.control, accounts)


@pytest.fixture
def e2e(e2e_stack, binance, transactional_db):
    PeriodicTask.objects.update(enabled=False)  # only what a test starts runs
    with override_settings(**NUMERIC):
        harness = E2E(e2e_stack, binance)
        yield harness
    e2e_stack.stop("beat")
    binance.control.clear_faults()
    for name in ("worker1", "worker2"):
        if name not in e2e_stack.procs or e2e_stack.procs[name].poll() is not None:
            e2e_stack.start_worker(name)
    if "stream" not in e2e_stack.procs or e2e_stack.procs["stream"].poll() is not None:
        e2e_stack.start_stream()
