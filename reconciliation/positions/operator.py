"""What an operator does to positions from the admin: `close_trade_manually` (open → closed by a person, with a
reason), when position sync cannot tell which of several open trades on a symbol Binance no longer holds. Refused
unless Binance's position, asked now, is short of our trades by at least that trade. (Orphans: orphans.py.)"""

from __future__ import annotations

import logging
from decimal import Decimal

from trades.binance_client import BinanceFuturesClient
from trades.exceptions import ExchangeError
from trades.models import Trade, TradeEvent

from ..gateway import gateway
from ..operator import OperatorActionRefused, reason_and_actor
from ..reconcile.leases import account_lease
from .exposure import exchange_positions, explained_by_trades, position_key, signed_qty
from .sync import close_trade

logger = logging.getLogger(__name__)


def close_trade_manually(trade: Trade, *, reason: str, actor: str, client: BinanceFuturesClient | None = None) -> Trade:
    """open → closed by an operator, with a reason: for the case position sync cannot decide alone — several open
    trades on one symbol and Binance holds less than they add up to (one was closed, but which?).

    Refused unless Binance's position, asked now, shows our trades on the symbol hold at least this trade's
    quantity more than the exchange: closing it then moves the books towards the exchange, never away."""
    reason = reason_and_actor(reason, actor)
    if trade.status != Trade.Status.OPEN:
        raise OperatorActionRefused(f"trade {trade.pk} is {trade.status}, not open")
    # Under the account's lease: two operators closing trades of one symbol, or a position sync, cannot both act on
    # the same answer from Binance.
    with account_lease(trade.account_id) as held_lease:
        if not held_lease:
            raise OperatorActionRefused(f"a reconcile or another change of {trade.account} is running; try again")
        try:
            with gateway(trade.account, client) as client:
                held, _ = exchange_positions(client).get(position_key(trade), (Decimal("0"), None))
        except ExchangeError as exc:
            raise OperatorActionRefused(
                f"Binance could not be asked for the {trade.symbol} position ({exc}); not closing without its answer"
            ) from None
        ours = explained_by_trades(trade.account_id, position_key(trade))[position_key(trade)]
        surplus = ours - held  # what our trades hold that the exchange does not
        mine = signed_qty(trade)
        if mine == 0 or (surplus > 0) != (mine > 0) or abs(surplus) < abs(mine):
            raise OperatorActionRefused(
                f"Binance holds {held} {trade.symbol} and our trades {ours}: closing trade {trade.pk} ({mine}) would "
                "not bring them together"
            )
        if not close_trade(
            trade,
            source=TradeEvent.Source.ADMIN,
            actor=actor,
            reason=reason[:1000],
            status_reason=f"closed by {actor}: {reason}",
        ):
            raise OperatorActionRefused(f"trade {trade.pk} changed meanwhile; reload and look again")
    trade.refresh_from_db()
    logger.warning("trade %s closed by %s: %s (exchange %s, our trades %s)", trade.pk, actor, reason, held, ours)
    return trade
