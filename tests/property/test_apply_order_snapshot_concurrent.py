"""Property (MariaDB): two paths delivering the same order life at the same time — say the WebSocket and a
reconcile, each with its own DB connection, each with its own shuffled, duplicated, partly dropped copy — still
end the trade where docs/DESIGN.md "The one rule"'s table puts it, with one audit event per change.

Real row locks and READ COMMITTED need MariaDB/MySQL; on SQLite the test is skipped (`mysql_only`).
"""

import threading
import time
from decimal import Decimal
from itertools import pairwise

import pytest
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciliation.services import apply_order_snapshot
from tests.factories import AccountFactory, TradeFactory
from trades.models import Trade, TradeEvent

from .db import delete_accounts
from .profiles import examples
from .strategies import deliveries, order_lives, shaped

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.mysql]

PAUSES = st.sampled_from([0, 0.001, 0.003])
RANK = {"pending": 0, "open": 1, "cancelled": 1, "failed": 1}


def deliver(trade_id: int, life, plan, barrier: threading.Barrier, seen: list, errors: list) -> None:
    """One path: its own connection, its own copy of the trade, its own deliveries; records what it saw."""
    try:
        trade = Trade.objects.get(pk=trade_id)
        barrier.wait(timeout=10)
        for index, shape, reread, pause in plan:
            if reread:  # as a reconcile does: read the trade, ask Binance (the pause), apply the answer
                trade = Trade.objects.get(pk=trade_id)
            time.sleep(pause)  # the window in which the other path may write
            apply_order_snapshot(trade, shaped(life.snapshots[index], shape), "ws")
            fresh = Trade.objects.values("status", "filled_qty", "exchange_update_time").get(pk=trade_id)
            seen.append(fresh)
    except BaseException as exc:  # noqa: BLE001 — reported by the main thread
        errors.append(exc)
    finally:
        connection.close()


@settings(max_examples=examples(40))
@given(data=st.data(), life=order_lives())
def test_two_paths_at_once_end_in_the_tables_state_with_one_event_per_change(mysql_only, data, life):
    plans = [
        [
            (index, shape, data.draw(st.booleans()), data.draw(PAUSES))
            for index, shape in data.draw(deliveries(life), label=f"path {n}")
        ]
        for n in (1, 2)
    ]
    account = AccountFactory()
    try:
        trade = TradeFactory(
            account=account,
            symbol=life.symbol,
            quantity=life.quantity,
            price=life.price,
            client_order_id=life.client_order_id,
        )
        barrier = threading.Barrier(2)
        seen: list[list[dict]] = [[], []]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=deliver, args=(trade.pk, life, plan, barrier, seen[n], errors))
            for n, plan in enumerate(plans)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a path hung"
        assert not errors, errors

        # Each path, reading after each of its writes, never saw the trade go backwards.
        for path in seen:
            for before, after in pairwise(path):
                assert RANK[after["status"]] >= RANK[before["status"]]
                if before["status"] != "pending":
                    assert after["status"] == before["status"]
                assert after["filled_qty"] >= before["filled_qty"]
                assert (after["exchange_update_time"] or 0) >= (before["exchange_update_time"] or 0)

        status, filled_qty, entry_price = life.expected()
        final = Trade.objects.get(pk=trade.pk)
        assert (final.status, final.filled_qty, final.entry_price) == (status, filled_qty, entry_price)
        assert final.exchange_update_time == life.final["updateTime"]
        events = list(
            TradeEvent.objects.filter(trade=final).order_by("pk").values_list("from_status", "to_status", "filled_qty")
        )
        changes = [(f, t) for f, t, _ in events if f != t]
        assert changes == ([] if status == "pending" else [("pending", status)])
        progress = [qty for f, t, qty in events if f == t == "pending"]
        assert progress == sorted(set(progress)), "two progress events for one fill, or one out of order"
        assert all(Decimal(0) < qty <= filled_qty for qty in progress)
    finally:
        delete_accounts(account)
