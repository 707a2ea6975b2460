"""What an operator does to an order's state from the admin (the admin only calls these; it holds no logic).

- `verify_on_binance`: fetch the trade's order and apply it through THE rule (`apply_order_snapshot`, source
  "admin", actor = the admin user) — the same state change any other path would make, never a guess.
- `mark_trade_manually`: pending → failed/cancelled by a person, with a reason. Refused unless Binance confirms
  there is nothing to lose: the order shows no fill and is not working (or never existed). If Binance cannot be
  reached, it is refused too — a manual mark is only ever made with the exchange's answer in hand.

Positions have their own (positions/operator.py, positions/orphans.py). Every trade change is one compare-and-set
plus one audited TradeEvent carrying the actor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q

from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.db import db_now, retry_transient_db_errors
from trades.exceptions import ExchangeError
from trades.models import Trade, TradeEvent

from ..gateway import gateway
from ..operator import OperatorActionRefused, reason_and_actor
from ..stream.guard import MissDetector
from .apply import apply_order_snapshot, fetch_order
from .rules import SnapshotMismatch, in_not_found_grace
from .snapshots import FILLED, NOT_FOUND, PLACING, InvalidSnapshot, OrderSnapshot

logger = logging.getLogger(__name__)

MANUAL_STATUSES = (Trade.Status.FAILED, Trade.Status.CANCELLED)


@dataclass
class Verification:
    trade: Trade
    before: dict  # the DB row's relevant fields before
    exchange: dict | None = None  # Binance's snapshot of the order
    result: str = ""  # rules.* result name
    error: str = ""  # why nothing was applied (Binance unreachable, no order reference, …)


def trade_view(trade: Trade) -> dict:
    return {
        "status": trade.status,
        "filled_qty": trade.filled_qty,
        "entry_price": trade.entry_price,
        "entry_order_id": trade.entry_order_id,
        "exchange_status": trade.exchange_status,
    }


def snapshot_view(snap: OrderSnapshot) -> dict:
    return {
        "status": snap.status,
        "executed_qty": snap.executed_qty,
        "avg_price": snap.avg_price,
        "order_id": snap.order_id,
        "client_order_id": snap.client_order_id,
        "update_time": snap.update_time,
    }


def _fetch_snapshot(
    trade: Trade, client: BinanceFuturesClient | None
) -> tuple[dict[str, Any] | OrderSnapshot, OrderSnapshot]:
    with gateway(trade.account, client, priority=egress.VERIFY) as client:
        order = fetch_order(client, trade)
    return order, OrderSnapshot.parse(order)


def verify_on_binance(trade: Trade, *, actor: str, client: BinanceFuturesClient | None = None) -> Verification:
    """Ask Binance for the trade's order and apply the answer through the one rule (audited with `actor`).

    Raises ExchangeError when Binance cannot answer, LookupError when the trade has no order reference."""
    before = trade_view(trade)
    order, snap = _fetch_snapshot(trade, client)
    result = apply_order_snapshot(trade, order, TradeEvent.Source.ADMIN, actor=actor)
    MissDetector(trade.account_id).observe(trade, result, TradeEvent.Source.ADMIN)
    logger.info("trade %s verified on Binance by %s: %s (%s)", trade.pk, actor, result, snap.status)
    return Verification(trade=trade, before=before, exchange=snapshot_view(snap), result=result)


def verify_trades_on_binance(trades: Iterable[Trade], *, actor: str) -> list[Verification]:
    """verify_on_binance for each trade, one gateway per account; a trade Binance cannot answer for gets an error
    instead of stopping the others."""
    clients: dict[int, BinanceFuturesClient] = {}
    results = []
    try:
        for trade in trades:
            if trade.account_id not in clients:
                clients[trade.account_id] = BinanceFuturesClient.for_account(trade.account, priority=egress.VERIFY)
            try:
                results.append(verify_on_binance(trade, actor=actor, client=clients[trade.account_id]))
            except (ExchangeError, LookupError, InvalidSnapshot, SnapshotMismatch) as exc:
                logger.warning("trade %s: verify on Binance by %s failed: %s", trade.pk, actor, exc)
                results.append(
                    Verification(trade=trade, before=trade_view(trade), error=str(exc) or type(exc).__name__)
                )
    finally:
        for client in clients.values():
            client.close()
    return results


def mark_trade_manually(
    trade: Trade, *, status: str, reason: str, actor: str, client: BinanceFuturesClient | None = None
) -> Trade:
    """pending → `status` (failed or cancelled) by an operator, after Binance confirms no fill and no live order.

    Raises OperatorActionRefused with the reason when it does not apply."""
    if status not in MANUAL_STATUSES:
        raise OperatorActionRefused(f"a trade can only be marked {' or '.join(MANUAL_STATUSES)} by hand")
    reason = reason_and_actor(reason, actor)
    if trade.status != Trade.Status.PENDING:
        raise OperatorActionRefused(f"trade {trade.pk} is {trade.status}, not pending")
    try:
        _, snap = _fetch_snapshot(trade, client)
    except LookupError:
        raise OperatorActionRefused(f"trade {trade.pk} has no order reference to check on Binance") from None
    except ExchangeError as exc:
        raise OperatorActionRefused(
            f"Binance could not be asked about trade {trade.pk} ({exc}); not marking it without the exchange's answer"
        ) from None
    if snap.status == FILLED or snap.executed_qty > 0:
        raise OperatorActionRefused(
            f"Binance shows trade {trade.pk} {snap.status} with {snap.executed_qty} filled: use “Verify on Binance”"
        )
    if snap.is_working:
        raise OperatorActionRefused(
            f"trade {trade.pk}'s order is still {snap.status} on Binance: use “Cancel and verify”"
        )
    # Never sent (exchange_status ""): safe to mark at any time, a placement only claims a pending trade. Sent
    # moments ago: Binance may not show the order yet.
    if (
        snap.status == NOT_FOUND
        and trade.exchange_status == PLACING
        and in_not_found_grace(trade, db_now(), settings.PENDING_NOT_FOUND_GRACE_SEC)
    ):
        raise OperatorActionRefused(
            f"trade {trade.pk}'s order was sent moments ago and Binance may not show it yet; look again in a minute"
        )
    exchange = "order never reached the exchange" if snap.status == NOT_FOUND else f"{snap.status} on exchange"
    status_reason = f"marked {status} by {actor}: {reason}"[:255]
    updated = retry_transient_db_errors(Trade.objects.compare_and_set)(
        {"pk": trade.pk},
        expected_status=Trade.Status.PENDING,
        changes={"status": status, "status_reason": status_reason, "needs_operator": False},
        # Unchanged since Binance was asked: not sent meanwhile, nothing filled meanwhile.
        condition=Q(filled_qty=0, exchange_status=trade.exchange_status),
        source=TradeEvent.Source.ADMIN,
        actor=actor,
        payload={
            "manual": True,
            "reason": reason[:1000],
            "exchange": exchange,
            "exchange_status": snap.status,
            "order_id": snap.order_id,
        },
    )
    if updated is None:
        raise OperatorActionRefused(f"trade {trade.pk} changed meanwhile; reload and look again")
    for f in Trade._meta.concrete_fields:
        setattr(trade, f.attname, getattr(updated, f.attname))
    logger.warning("trade %s marked %s by %s: %s (%s)", trade.pk, status, actor, reason, exchange)
    return trade


__all__ = [
    "OperatorActionRefused",
    "Verification",
    "verify_on_binance",
    "verify_trades_on_binance",
    "mark_trade_manually",
]
