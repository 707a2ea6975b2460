"""What every operator action shares, whatever room it lives in (orders/operator.py, positions/operator.py,
positions/orphans.py): the refusal the admin shows as is, and the who-and-why every change by hand records."""

from __future__ import annotations


class OperatorActionRefused(Exception):
    """The action was not taken; the message says why (shown to the operator as is)."""


def reason_and_actor(reason: str, actor: str) -> str:
    """A change by hand needs who and why, for its audit event: the stripped reason, or OperatorActionRefused."""
    reason = (reason or "").strip()
    if not reason:
        raise OperatorActionRefused("a reason is required")
    if not actor:
        raise OperatorActionRefused("an operator (actor) is required")
    return reason
