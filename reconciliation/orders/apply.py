"""THE rule applied: every path that learns an order's state calls `apply_order_snapshot`, which asks `rules.decide`
and writes the decision with one compare-and-set (`Trade.objects.compare_and_set`: one UPDATE + one TradeEvent).
Also the operator flag (`flag_for_operator`) and the one look-up of a trade's order on Binance (`fetch_order`)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from trades.binance_client import BinanceFuturesClient
from trades.db import db_now, retry_transient_db_errors
from trades.models import Trade

from . import rules
from .results import Result
from .snapshots import NOT_FOUND, OrderSnapshot

logger = logging.getLogger(__name__)


def apply_order_snapshot(
    trade: Trade, order: OrderSnapshot | dict[str, Any], source: str, *, actor: str = ""
) -> Result:
    """Make the state change Binance's view of this trade's order calls for (rules.py), compare-and-set, with one
    audit event. `order`: a REST order dict, a WebSocket ORDER_TRADE_UPDATE (or its `o`), or an OrderSnapshot.

    Returns the result name (rules.OPENED, rules.UNCHANGED, …). `trade` is updated in place. Raises InvalidSnapshot
    for a payload that is not an order and rules.SnapshotMismatch for another order's snapshot; changes nothing then.
    """
    snap = OrderSnapshot.parse(order)
    rules.check_same_order(trade, snap)
    grace = settings.PENDING_NOT_FOUND_GRACE_SEC
    for _ in range(3):  # lost a race to another path: re-read and decide again on the fresh row
        # A -2013 is judged against the grace on the database's clock (placed_at is taken on it): a worker whose own
        # clock jumped ahead must not skip the grace and fail a live order.
        now = db_now() if snap.status == NOT_FOUND else timezone.now()
        decision = rules.decide(trade, snap, now, grace_sec=grace, recheck_sec=settings.NOT_FOUND_RECHECK_SEC)
        if isinstance(decision, str):
            if decision == rules.NEEDS_OPERATOR:
                flag_for_operator(
                    trade, reason=f"Binance says {snap.status} for an order seen before", source=source, actor=actor
                )
            logger.debug("trade %s: %s from %s (%s)", trade.pk, decision, source, snap.status)
            return decision
        if _write(trade, decision, source, actor):
            logger.info(
                "trade %s %s: account=%s client_order_id=%s source=%s exchange=%s filled=%s status=%s",
                trade.pk,
                decision.result,
                trade.account_id,
                trade.client_order_id,
                source,
                snap.status,
                trade.filled_qty,
                trade.status,
            )
            return decision.result
        trade.refresh_from_db()
    logger.warning("trade %s: gave up applying %s from %s after repeated races", trade.pk, snap.status, source)
    return rules.UNCHANGED


@retry_transient_db_errors
def _write(trade: Trade, decision: rules.Decision, source: str, actor: str) -> bool:
    if decision.audited:
        updated = Trade.objects.compare_and_set(
            {"pk": trade.pk},
            expected_status=decision.expected_status,
            changes=decision.changes,
            source=source,
            condition=decision.condition,
            payload=decision.payload,
            actor=actor,
        )
        if updated is None:
            return False
        for f in Trade._meta.concrete_fields:
            setattr(trade, f.attname, getattr(updated, f.attname))
        return True
    query = Trade.objects.filter(pk=trade.pk, status=decision.expected_status)
    if decision.condition is not None:
        query = query.filter(decision.condition)
    if query.update(**decision.changes, updated_at=timezone.now()) != 1:
        return False
    for name, value in decision.changes.items():
        setattr(trade, name, value)
    return True


def flag_for_operator(trade: Trade, *, reason: str, source: str, actor: str = "") -> bool:
    """Mark a trade as needing a person (once), with the reason in its audit trail. Never changes its status."""
    updated = retry_transient_db_errors(Trade.objects.compare_and_set)(
        {"pk": trade.pk},
        expected_status=trade.status,
        changes={"needs_operator": True},
        source=source,
        condition=Q(needs_operator=False),
        payload={"flag": "needs_operator", "reason": reason},
        actor=actor,
    )
    if updated is None:
        return False
    trade.needs_operator = True
    logger.warning(
        "trade %s flagged for an operator: account=%s client_order_id=%s reason=%s",
        trade.pk,
        trade.account_id,
        trade.client_order_id,
        reason,
    )
    return True


def fetch_order(client: BinanceFuturesClient, trade: Trade) -> dict[str, Any] | OrderSnapshot:
    """The trade's order as Binance has it, or a NOT_FOUND snapshot (-2013). LookupError: nothing to look up by."""
    if trade.client_order_id:
        order = client.get_order_by_client_order_id(trade.symbol, trade.client_order_id)
    elif trade.entry_order_id is not None:
        order = client.get_order(trade.symbol, trade.entry_order_id)
    else:
        raise LookupError("no order reference")
    if order is None:
        return OrderSnapshot.not_found(
            trade.symbol, order_id=trade.entry_order_id, client_order_id=trade.client_order_id
        )
    return order
