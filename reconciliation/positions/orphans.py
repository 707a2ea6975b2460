"""Orphans: exchange positions no trade explains (recorded by the position sync, sync.py). Two ways out, both
recording who: `recover_orphan` (an open trade; by an operator, or by SYNC_RECOVER_MISSING_POSITIONS) and
`dismiss_orphan` (an operator accepts it, e.g. opened by hand)."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from trades.models import Trade, TradeEvent

from ..models import OrphanPosition
from ..operator import OperatorActionRefused
from .exposure import explained_by_trades

logger = logging.getLogger(__name__)


def recoverable(unexplained: Decimal, amount: Decimal) -> bool:
    """A gap a new open trade can explain: the exchange holds more, on the same side, than our trades. (The other
    gaps mean our trades hold more than the exchange: an open trade to close or fix, not a trade to add.)"""
    return unexplained != 0 and (unexplained > 0) == (amount > 0) and abs(unexplained) <= abs(amount)


@transaction.atomic
def recover_orphan(orphan: OrphanPosition, *, source: str, actor: str = "") -> Trade:
    """Turn an orphan into an open trade (explicitly, or by SYNC_RECOVER_MISSING_POSITIONS), with its audit event."""
    orphan = OrphanPosition.objects.select_for_update().get(pk=orphan.pk)
    if orphan.status != OrphanPosition.Status.OPEN:
        raise ValueError(f"orphan {orphan.pk} is {orphan.status}, not open")
    if not recoverable(orphan.quantity, orphan.exchange_position):
        raise ValueError(
            f"our trades hold more {orphan.symbol} than the exchange ({orphan.exchange_position}): "
            "close or fix those trades instead"
        )
    if Trade.objects.pending().filter(account_id=orphan.account_id, symbol=orphan.symbol).exists():
        raise ValueError(f"pending {orphan.symbol} trades may explain it once their fills land: reconcile first")
    key = (orphan.symbol, orphan.position_side)
    now_unexplained = orphan.exchange_position - explained_by_trades(orphan.account_id, key)[key]
    if now_unexplained != orphan.quantity:
        raise ValueError(f"our {orphan.symbol} trades changed since the position sync that saw it: sync again")
    now = timezone.now()
    qty = abs(orphan.quantity)
    trade = Trade.objects.create(
        account_id=orphan.account_id,
        symbol=orphan.symbol,
        side=Trade.Side.BUY if orphan.quantity > 0 else Trade.Side.SELL,
        position_side=orphan.position_side,
        quantity=qty,
        filled_qty=qty,
        entry_price=orphan.entry_price,
        status=Trade.Status.OPEN,
        status_reason="recovered from an orphan exchange position",
        opened_at=now,
        client_order_id=None,
    )
    TradeEvent.objects.create(
        trade=trade,
        created_at=now,
        source=source,
        from_status="",
        to_status=Trade.Status.OPEN,
        filled_qty=qty,
        payload={"recovered_orphan": orphan.pk, "exchange_position": str(orphan.exchange_position)},
        actor=actor,
    )
    orphan.status, orphan.trade, orphan.note = OrphanPosition.Status.RECOVERED, trade, f"recovered by {actor or source}"
    orphan.save(update_fields=["status", "trade", "note"])
    logger.warning("account %s: orphan %s %s recovered as trade %s", orphan.account_id, orphan.symbol, qty, trade.pk)
    return trade


def dismiss_orphan(orphan: OrphanPosition, *, reason: str, actor: str) -> bool:
    """open → dismissed, with who and why in its note. False if it was no longer open. If the position is still
    unexplained at the next position sync, a new orphan is recorded (the exchange still holds it)."""
    reason = (reason or "").strip()
    if not reason:
        raise OperatorActionRefused("a reason is required")
    note = f"dismissed by {actor} at {timezone.now():%Y-%m-%d %H:%M} UTC: {reason}"[:255]
    changed = OrphanPosition.objects.filter(pk=orphan.pk, status=OrphanPosition.Status.OPEN).update(
        status=OrphanPosition.Status.DISMISSED, note=note
    )
    if changed:
        orphan.status, orphan.note = OrphanPosition.Status.DISMISSED, note
        logger.warning("orphan %s (%s %s %s) %s", orphan.pk, orphan.account_id, orphan.symbol, orphan.quantity, note)
    return bool(changed)
