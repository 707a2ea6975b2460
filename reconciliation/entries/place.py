"""Placing an entry order, once: the placement claim, the order sent with the positionSide the account's mode asks
for, and Binance's answer (or definite refusal) applied through the one rule. An unknown outcome stays pending."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from trades import egress
from trades.binance_client import BinanceFuturesClient
from trades.db import db_now
from trades.exceptions import ClockSkew, ExchangeError, RateLimited, TransientExchangeError
from trades.models import Trade, TradeEvent

from ..gateway import gateway
from ..orders.apply import apply_order_snapshot
from ..orders.snapshots import PLACING, OrderSnapshot
from .position_mode import POSITION_SIDE_MISMATCH, entry_position_side, is_hedge_mode

logger = logging.getLogger(__name__)

Source = TradeEvent.Source

DUPLICATE_CLIENT_ORDER_ID_CODES = frozenset({-4116, -4015})  # "the order may exist already": never failed


def place_entry_order(
    trade: Trade, *, client: BinanceFuturesClient | None = None, deadline_sec: float | None = None
) -> dict[str, Any]:
    """Send the trade's order to Binance once. An unknown outcome (timeout, 503 "Unknown error") leaves the trade
    pending for the reconcile to decide by client order id; only a definite refusal fails it.

    `deadline_sec`: the entry's wait. Its deadline (`cancel_after`, unless the trade has one) is stored in the same
    update that claims the placement, before the order is sent, so a live order always has one (cancels/deadlines.py)."""
    now = db_now()  # the not-found grace and the deadline run from here, on the database's clock (every worker's)
    claim: dict[str, Any] = {"exchange_status": PLACING, "placed_at": now, "updated_at": now}
    if deadline_sec is not None and trade.cancel_after is None:
        claim["cancel_after"] = now + timedelta(seconds=max(deadline_sec, 0))
    claimed = Trade.objects.filter(pk=trade.pk, status=Trade.Status.PENDING, exchange_status="").update(**claim)
    if not claimed:
        # Already sent once (e.g. this task was re-delivered after a crash): never send a second order.
        return {"trade_id": trade.pk, "outcome": "already_attempted"}
    trade.exchange_status, trade.placed_at = PLACING, now
    trade.cancel_after = claim.get("cancel_after", trade.cancel_after)
    try:
        # The order's share of the budget for the whole entry: a position-mode read it needs first must not be
        # refused at a lower priority than the order it is for.
        with gateway(trade.account, client, priority=egress.ORDER) as client:
            order = _send_entry(trade, client)
    except _ModeUnknown as exc:  # nothing was sent: a definite no
        return _refused(trade, exc.code, f"not sent: position mode unknown ({exc})")
    except RateLimited as exc:  # refused before execution: a definite no
        return _refused(trade, exc.code, f"rate limited ({exc.status or 'not sent'})")
    except ClockSkew as exc:  # -1021 twice (the gateway re-synced and resent once): not executed, a definite no
        return _refused(trade, exc.code, f"{exc.code}: {exc.message}")
    except TransientExchangeError as exc:
        logger.warning("trade %s: placement outcome unknown (%s); stays pending for reconcile", trade.pk, exc)
        return {"trade_id": trade.pk, "outcome": "unknown"}
    except ExchangeError as exc:
        if exc.code in DUPLICATE_CLIENT_ORDER_ID_CODES or exc.execution_unknown:
            logger.warning("trade %s: placement answered %s; stays pending for reconcile", trade.pk, exc)
            return {"trade_id": trade.pk, "outcome": "unknown"}
        return _refused(trade, exc.code, f"{exc.code}: {exc.message}")
    result = apply_order_snapshot(trade, order, Source.PLACE)
    return {"trade_id": trade.pk, "outcome": "placed", "result": result, "status": trade.status}


def _refused(trade: Trade, code: int | None, reason: str) -> dict[str, Any]:
    """A placement Binance refused before executing anything (or that was never sent): a definite no, through the
    rule like every other answer."""
    snapshot = OrderSnapshot.rejected_on_placement(trade.symbol, trade.client_order_id, code, reason)
    result = apply_order_snapshot(trade, snapshot, Source.PLACE)
    return {"trade_id": trade.pk, "outcome": "rejected", "result": result}


class _ModeUnknown(Exception):
    def __init__(self, error: ExchangeError) -> None:
        super().__init__(str(error))
        self.code = error.code


def _send_entry(trade: Trade, client: BinanceFuturesClient) -> dict[str, Any]:
    """POST the entry with the positionSide the account's mode asks for, recorded on the trade before it is sent.
    A -4061 means the mode changed under us (refused, nothing executed): re-read the mode and, if it did change,
    send once more under the same client order id."""
    for attempt in range(2):
        try:
            hedge = is_hedge_mode(trade.account, client, refresh=attempt > 0)
        except ExchangeError as exc:
            raise _ModeUnknown(exc) from None
        side = entry_position_side(trade.side, hedge)
        if side != trade.position_side:
            Trade.objects.filter(pk=trade.pk, status=Trade.Status.PENDING).update(position_side=side)
            trade.position_side = side
        elif attempt > 0:
            break  # the mode did not change: the refusal stands
        try:
            return client.place_order(
                trade.symbol,
                trade.side,
                trade.quantity,
                order_type="LIMIT" if trade.price else "MARKET",
                price=trade.price,
                client_order_id=trade.client_order_id,
                position_side=None if side == Trade.PositionSide.BOTH else side,
            )
        except ExchangeError as exc:
            if exc.code != POSITION_SIDE_MISMATCH or attempt > 0:
                raise
            logger.warning(
                "trade %s: Binance refused positionSide %s (-4061); re-reading the position mode", trade.pk, side
            )
            refused = exc
    raise refused
