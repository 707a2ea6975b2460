"""Property: the one rule (`apply_order_snapshot`) ends every trade where docs/DESIGN.md "The one rule"'s table puts it, whatever mix of
paths, duplicates, drops and reordering the order's snapshots arrive through."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciliation.orders import rules
from reconciliation.services import apply_order_snapshot
from tests.factories import AccountFactory, TradeFactory
from trades.models import Trade, TradeEvent

from .db import rolled_back, row
from .profiles import examples
from .strategies import SHAPES, client_order_ids, deliveries, order_lives, shaped

pytestmark = pytest.mark.django_db

TRANSITIONS = {rules.OPENED: "open", rules.CANCELLED: "cancelled", rules.FAILED: "failed"}


def new_trade(life, *, knows_order_id: bool, account=None) -> Trade:
    return TradeFactory(
        account=account or AccountFactory(),
        symbol=life.symbol,
        quantity=life.quantity,
        price=life.price,
        client_order_id=life.client_order_id,
        entry_order_id=life.order_id if knows_order_id else None,
    )


def status_events(trade) -> list[tuple[str, str]]:
    return [
        (e.from_status, e.to_status)
        for e in TradeEvent.objects.filter(trade=trade).order_by("pk")
        if e.from_status != e.to_status
    ]


def progress_events(trade) -> list[Decimal]:
    return list(
        TradeEvent.objects.filter(trade=trade, from_status="pending", to_status="pending")
        .order_by("pk")
        .values_list("filled_qty", flat=True)
    )


@settings(max_examples=examples(400))
@given(data=st.data(), life=order_lives(), knows_order_id=st.booleans())
def test_any_delivery_of_an_orders_life_ends_in_the_tables_state(data, life, knows_order_id):
    plan = data.draw(deliveries(life), label="deliveries (snapshot index, shape)")
    with rolled_back():
        trade = new_trade(life, knows_order_id=knows_order_id)
        # The callers: each path (the stream, the REST wait, a reconcile, …) holds its own copy of the trade, loaded
        # once and only updated by its own apply_order_snapshot calls — interleaving them is a deterministic
        # stand-in for concurrency (the threaded MariaDB variant does it for real).
        copies = [Trade.objects.get(pk=trade.pk) for _ in range(data.draw(st.integers(1, 3), label="callers"))]
        before = row(trade)
        for index, shape in plan:
            who = data.draw(st.integers(-1, len(copies) - 1), label="caller (-1: a fresh read)")
            caller = Trade.objects.get(pk=trade.pk) if who < 0 else copies[who]
            events_before = TradeEvent.objects.filter(trade=trade).count()
            result = apply_order_snapshot(caller, shaped(life.snapshots[index], shape), "ws")
            after = row(trade)
            new_events = TradeEvent.objects.filter(trade=trade).count() - events_before

            # Never backwards.
            if before["status"] != "pending":
                assert after["status"] == before["status"], "a trade left its final state"
            assert after["filled_qty"] >= before["filled_qty"], "filled_qty decreased"
            if before["exchange_update_time"] is not None:
                assert after["exchange_update_time"] >= before["exchange_update_time"], "an older snapshot won"
            # One audit event per state change, and only then.
            changed_status = after["status"] != before["status"]
            progressed = after["status"] == "pending" and after["filled_qty"] > before["filled_qty"]
            assert new_events == (1 if changed_status or progressed else 0)
            if changed_status:
                assert TRANSITIONS[result] == after["status"]
            elif progressed:
                assert result == rules.PROGRESS
            else:
                assert result in (rules.NOTED, rules.UNCHANGED, rules.STALE, rules.IGNORED)
            if result not in (rules.UNCHANGED, rules.STALE, rules.IGNORED):  # it wrote: its copy is the row now
                assert (caller.status, caller.filled_qty) == (after["status"], after["filled_qty"])
            before = after

        status, filled_qty, entry_price = life.expected()
        final = row(trade)
        assert (final["status"], final["filled_qty"], final["entry_price"]) == (status, filled_qty, entry_price)
        assert final["entry_order_id"] == life.order_id
        assert final["exchange_status"] == life.final["status"]
        assert final["exchange_update_time"] == life.final["updateTime"]
        assert (final["opened_at"] is not None) == (status == "open")
        assert status_events(trade) == ([] if status == "pending" else [("pending", status)])
        progress = progress_events(trade)
        assert progress == sorted(set(progress)), "a progress event without a filled_qty increase"
        assert all(0 < qty <= Decimal(life.final["executedQty"]) for qty in progress)


@settings(max_examples=examples(200))
@given(
    data=st.data(),
    life=order_lives(),
    other=order_lives(),
    how=st.sampled_from(["other_client_order_id", "same_client_id_other_order_id", "other_symbol"]),
)
def test_another_orders_snapshot_changes_nothing(data, life, other, how):
    """A snapshot about another order — another client order id; the same client order id with another orderId
    (what another account's order looks like, the trade knowing its own orderId); another symbol — raises
    SnapshotMismatch and writes nothing, wherever the trade is in its own life."""
    foreign = dict(data.draw(st.sampled_from(other.snapshots), label="foreign snapshot"))
    if how == "other_client_order_id":
        foreign["symbol"] = life.symbol
        foreign["clientOrderId"] = data.draw(client_order_ids.filter(lambda c: c != life.client_order_id))
    elif how == "same_client_id_other_order_id":
        foreign["symbol"] = life.symbol
        foreign["clientOrderId"] = life.client_order_id
        foreign["orderId"] = data.draw(st.integers(1, 2**62).filter(lambda i: i != life.order_id))
    else:
        foreign["symbol"] = data.draw(st.sampled_from(["XRPUSDT", "BTCUSDT_260327", "btcusdt"]))
        foreign["clientOrderId"] = life.client_order_id
        foreign["orderId"] = life.order_id
    with rolled_back():
        trade = new_trade(life, knows_order_id=how == "same_client_id_other_order_id" or data.draw(st.booleans()))
        # Bring the trade somewhere along its own life first.
        own = data.draw(deliveries(life, max_copies=1), label="own deliveries")
        for index, shape in own[: data.draw(st.integers(0, len(own)), label="own deliveries applied")]:
            apply_order_snapshot(trade, shaped(life.snapshots[index], shape), "reconcile")
        before, events_before = row(trade), TradeEvent.objects.filter(trade=trade).count()

        with pytest.raises(rules.SnapshotMismatch):
            apply_order_snapshot(trade, shaped(foreign, data.draw(st.sampled_from(SHAPES), label="shape")), "ws")

        assert row(trade) == before
        assert TradeEvent.objects.filter(trade=trade).count() == events_before
