"""The account's position mode (one-way or hedge), as Binance has it.

Learned from Binance (GET /fapi/v1/positionSide/dual, weight 30), never typed in by an operator: cached on the
account for POSITION_MODE_REFRESH_SEC and read again when it is older, or when Binance refuses an order with -4061
("Order's position side does not match user's setting": someone switched the mode).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from trades.binance_client import BinanceFuturesClient
from trades.exceptions import ExchangeError
from trades.models import Account, Trade

logger = logging.getLogger(__name__)

POSITION_SIDE_MISMATCH = -4061


def is_hedge_mode(account: Account, client: BinanceFuturesClient, *, refresh: bool = False) -> bool:
    """True in hedge mode. Reads Binance when the cached mode is missing, older than POSITION_MODE_REFRESH_SEC or
    `refresh` is asked; if that read fails, a cached mode is used (a wrong one costs a -4061 and a re-read, never a
    wrong order) and with none the error propagates."""
    now = timezone.now()
    checked = account.position_mode_checked_at
    fresh = (
        checked is not None
        and account.dual_side_position is not None
        and now - checked < timedelta(seconds=settings.POSITION_MODE_REFRESH_SEC)
    )
    if fresh and not refresh and account.dual_side_position is not None:  # `fresh` says it is not None
        return account.dual_side_position
    try:
        dual = client.get_position_mode()
    except ExchangeError as exc:
        if account.dual_side_position is None:
            raise
        logger.warning(
            "account %s: position mode not re-read (%s); using the cached %s",
            account.pk,
            exc,
            "hedge" if account.dual_side_position else "one-way",
        )
        return account.dual_side_position
    if dual != account.dual_side_position and account.dual_side_position is not None:
        logger.warning("account %s: Binance says %s mode now", account.pk, "hedge" if dual else "one-way")
    Account.objects.filter(pk=account.pk).update(dual_side_position=dual, position_mode_checked_at=now)
    account.dual_side_position, account.position_mode_checked_at = dual, now
    return dual


def entry_position_side(side: str, hedge: bool) -> str:
    """An entry's positionSide: BOTH in one-way mode; in hedge mode BUY opens LONG and SELL opens SHORT."""
    if not hedge:
        return Trade.PositionSide.BOTH
    return Trade.PositionSide.LONG if side == Trade.Side.BUY else Trade.PositionSide.SHORT
