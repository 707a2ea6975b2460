"""docs/DESIGN.md "Fault matrix"'s invariant, checked against the exchange's own truth (the sandbox's control API, which ignores
injected faults): for every trade the DB agrees with its order (status, filled quantity, average price), each
state change has exactly one audit event, and every exchange position is explained by open trades or reported as
an orphan."""

from collections import defaultdict
from decimal import Decimal

from reconciliation.models import OrphanPosition
from sandbox.control import SandboxControlError
from trades.models import Trade, TradeEvent

ENDED = {"CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"}


def expected_status(order: dict | None) -> str:
    """docs/DESIGN.md "The one rule"'s table, read off the exchange's order (None: Binance never saw it)."""
    if order is None:
        return Trade.Status.FAILED
    executed = Decimal(order["executedQty"])
    if order["status"] == "FILLED" or (order["status"] in ENDED and executed > 0):
        return Trade.Status.OPEN
    if order["status"] in ENDED:
        return Trade.Status.CANCELLED
    if order["status"] == "REJECTED":
        return Trade.Status.FAILED
    return Trade.Status.PENDING


def exchange_order(control, trade: Trade) -> dict | None:
    try:
        return control.get_order(trade.account.api_key, trade.symbol, client_order_id=trade.client_order_id)
    except SandboxControlError as exc:
        if exc.status == 404:
            return None
        raise


def trade_problems(control, trade: Trade) -> list[str]:
    order = exchange_order(control, trade)
    problems = []
    want = expected_status(order)
    if trade.status == Trade.Status.CLOSED and want == Trade.Status.OPEN:
        want = Trade.Status.CLOSED  # opened, then its position went away (position sync)
    if trade.status != want:
        problems.append(f"status {trade.status}, exchange says {want} ({order and order['status']})")
    if order is not None:
        executed = Decimal(order["executedQty"])
        if trade.filled_qty != executed:
            problems.append(f"filled_qty {trade.filled_qty}, exchange {executed}")
        if executed > 0 and trade.entry_price != Decimal(order["avgPrice"]):
            problems.append(f"entry_price {trade.entry_price}, exchange avgPrice {order['avgPrice']}")
    events = list(TradeEvent.objects.filter(trade=trade).order_by("created_at", "pk"))
    transitions = [(e.from_status, e.to_status) for e in events if e.from_status != e.to_status]
    path = [Trade.Status.PENDING] + [to for _, to in transitions]
    if any(frm != path[i] for i, (frm, _) in enumerate(transitions)):
        problems.append(f"audit trail does not chain: {transitions}")
    if path[-1] != trade.status:
        problems.append(f"audit trail ends at {path[-1]}, trade is {trade.status}")
    if len(transitions) != len(set(transitions)):
        problems.append(f"a transition was audited twice: {transitions}")
    return problems


def position_problems(control, account) -> list[str]:
    """Per (symbol, position side): the exchange's position equals the signed open quantity of our trades, or the
    gap is an open orphan."""
    held = defaultdict(Decimal)
    for trade in Trade.objects.filter(account=account, status__in=[Trade.Status.OPEN, Trade.Status.PENDING]):
        held[(trade.symbol, trade.position_side)] += trade.exposure
    orphans = {
        (o.symbol, o.position_side): o.quantity for o in OrphanPosition.objects.filter(account=account, status="open")
    }
    problems = []
    for position in control.positions(account.api_key)["positions"]:
        key, amount = (position["symbol"], position["positionSide"]), Decimal(position["positionAmt"])
        if amount != held[key] and orphans.get(key) != amount - held[key]:
            problems.append(f"{key}: exchange {amount}, trades {held[key]}, orphan {orphans.get(key)}")
    return problems


def assert_invariant(control, accounts) -> None:
    problems = []
    for account in accounts:
        for trade in Trade.objects.filter(account=account).select_related("account"):
            problems += [f"trade {trade.pk} {trade.client_order_id}: {p}" for p in trade_problems(control, trade)]
        problems += [f"account {account.name}: {p}" for p in position_problems(control, account)]
    assert not problems, "\n".join(problems)


def settled(control, accounts) -> bool:
    """True once every trade agrees with the exchange (for waiting with a deadline before the full check)."""
    for account in accounts:
        for trade in Trade.objects.filter(account=account).select_related("account"):
            order = exchange_order(control, trade)
            want = expected_status(order)
            if trade.status != want and not (trade.status == "closed" and want == "open"):
                return False
            if order is not None and trade.filled_qty != Decimal(order["executedQty"]):
                return False
    return True
