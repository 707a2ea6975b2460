"""Cancel, then always verify: the cancel's answer goes through the one rule, and a fresh look-up of the order
decides what the cancel really did (a fill may have won the race)."""

from __future__ import annotations

import logging
from typing import Any

from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.exceptions import ExchangeError, UnknownOrder
from trades.models import Trade, TradeEvent

from ..gateway import gateway
from ..orders import rules
from ..orders.apply import apply_order_snapshot, fetch_order, flag_for_operator
from ..orders.snapshots import OrderSnapshot
from ..stream import guard as stream_guard

logger = logging.getLogger(__name__)

Source = TradeEvent.Source


def cancel_trade_order(trade: Trade, *, client: BinanceFuturesClient | None = None, actor: str = "") -> dict[str, Any]:
    """Ask Binance to cancel the trade's order and apply its answer. -2011 (the order is not open: it may have just
    filled) is an expected outcome, not an error: the verification that always follows decides.

    A trade failed "not found" is cancelled too (by client order id): that inference can be wrong, and a cancel of
    an order that truly does not exist is a harmless -2011."""
    if trade.status != Trade.Status.PENDING and not rules.is_failed_not_found(trade):
        return {"trade_id": trade.pk, "outcome": "not_pending", "status": trade.status}
    if not trade.client_order_id and trade.entry_order_id is None:
        flag_for_operator(trade, reason="cannot cancel: no order reference", source=Source.CANCEL, actor=actor)
        return {"trade_id": trade.pk, "outcome": "no_order_ref"}
    try:
        with gateway(trade.account, client) as client:
            order = client.cancel_order(
                trade.symbol,
                client_order_id=trade.client_order_id or None,
                order_id=None if trade.client_order_id else trade.entry_order_id,
            )
    except UnknownOrder as exc:
        logger.info("trade %s: cancel answered -2011 (already filled/ended?): %s", trade.pk, exc)
        return {"trade_id": trade.pk, "outcome": "unknown_order"}
    result = apply_order_snapshot(trade, order, Source.CANCEL, actor=actor)
    return {"trade_id": trade.pk, "outcome": "cancelled", "result": result, "status": trade.status}


def verify_after_cancel(
    trade: Trade, *, client: BinanceFuturesClient | None = None, actor: str = "", resend_cancel: bool = False
) -> dict[str, Any]:
    """After a cancel (clean, raced by a fill, or failed): fetch the order again and apply it. `still_working`
    tells the caller Binance still shows it open (the cancel did not take); the task retries, then flags.

    `resend_cancel`: when the order is still working, send the cancel again now (the first one may never have
    reached Binance, e.g. lost to a database outage); its answer is applied like any cancel's, and the caller's next
    verification sees the outcome. A failing re-send is logged: the verification's verdict stands."""
    cancel_resent = False
    try:
        with gateway(trade.account, client, priority=egress.VERIFY) as client:
            snap = OrderSnapshot.parse(fetch_order(client, trade))
            result = apply_order_snapshot(trade, snap, Source.CANCEL_VERIFY, actor=actor)
            if snap.is_working and resend_cancel:
                try:
                    cancel_resent = cancel_trade_order(trade, client=client, actor=actor)["outcome"] != "not_pending"
                except ExchangeError as exc:
                    logger.warning("trade %s: cancel sent again after verification failed: %s", trade.pk, exc)
                else:
                    logger.info(
                        "trade %s: still %s on Binance after a cancel; cancel sent again", trade.pk, snap.status
                    )
    except LookupError:
        flag_for_operator(trade, reason="cannot verify: no order reference", source=Source.CANCEL_VERIFY, actor=actor)
        return {"trade_id": trade.pk, "result": rules.NEEDS_OPERATOR, "still_working": False, "status": trade.status}
    stream_guard.MissDetector(trade.account_id).observe(trade, result, Source.CANCEL_VERIFY)
    return {
        "trade_id": trade.pk,
        "result": result,
        "exchange_status": snap.status,
        "still_working": snap.is_working,
        "status": trade.status,
        "cancel_resent": cancel_resent,
    }
