"""Property: whatever interleaving of entries, exits (reduce-only orders, liquidation, ADL, settlement) and lagging
positionRisk reads the exchange goes through, once a read that does not lag has been compared, the open exposure of
our trades per (symbol, position side) equals Binance's position there, and no orphan is left open.

The exchange is the sandbox's own engine, in process (every Binance rule it enforces applies: hedge-mode sides,
reduce-only limits, userTrades windows), behind a client with the gateway's method names."""

from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciliation.models import OrphanPosition, ReconcileRun
from reconciliation.positions.exposure import explained_by_trades
from reconciliation.positions.sync import compare_positions
from reconciliation.reconcile.reports import Report
from sandbox.engine import Engine
from sandbox.errors import ApiError
from tests.factories import AccountFactory
from trades.models import Trade

from .db import rolled_back
from .profiles import examples

pytestmark = pytest.mark.django_db

SYMBOL = "BTCUSDT"
STEP = Decimal("0.001")


class EngineClient:
    """BinanceFuturesClient's methods position sync uses, answered by the sandbox engine in process."""

    def __init__(self, engine: Engine, account):
        self.engine, self.account, self.http_calls = engine, account, 0

    def get_position_mode(self):
        self.http_calls += 1
        return self.account.dual_side

    def get_positions(self):
        self.http_calls += 1
        return self.engine.position_rows(self.account, None)

    def get_user_trades_since(self, symbol, start_time):
        self.http_calls += 1
        return [
            f.to_binance() for f in self.engine.user_trades(self.account, symbol, None, start_time, None, None, 1000)
        ]

    def get_order(self, symbol, order_id):
        self.http_calls += 1
        return self.engine.query_order(self.account, symbol, order_id, None).to_binance()


def entry(side, qty):
    return ("entry", side, qty)


steps = st.one_of(
    st.tuples(st.just("entry"), st.sampled_from(["BUY", "SELL"]), st.integers(1, 20)),
    st.tuples(st.just("exit"), st.sampled_from(["BOTH", "LONG", "SHORT"]), st.integers(1, 20)),
    st.tuples(
        st.just("autoclose"),
        st.sampled_from(["liquidation", "adl", "settlement"]),
        st.sampled_from(["BOTH", "LONG", "SHORT"]),
        st.integers(1, 20),
    ),
    st.tuples(st.just("lag"), st.sampled_from(["omit", "stale"]), st.integers(1, 2)),
    st.tuples(st.just("sync")),
)


def position(engine, acct, side):
    pos = acct.positions.get((SYMBOL, side))
    return pos.amount if pos is not None else Decimal("0")


def run_step(engine, acct, account, step, hedge):
    kind = step[0]
    if kind == "entry":
        _, side, n = step
        ps = ("LONG" if side == "BUY" else "SHORT") if hedge else None
        order = engine.place_order(
            acct,
            symbol=SYMBOL,
            side=side,
            type="MARKET",
            quantity=STEP * n,
            price=None,
            time_in_force=None,
            client_order_id=None,
            reduce_only=False,
            position_side=ps,
        )
        now = timezone.now()
        Trade.objects.create(
            account=account,
            symbol=SYMBOL,
            side=side,
            position_side=ps or "BOTH",
            quantity=order.orig_qty,
            filled_qty=order.executed_qty,
            entry_price=order.avg_price,
            status=Trade.Status.OPEN,
            client_order_id=order.client_order_id,
            entry_order_id=order.order_id,
            placed_at=now,
            opened_at=now,
        )
    elif kind == "exit":
        _, ps, n = step
        if (ps == "BOTH") == hedge:
            return
        held = position(engine, acct, ps)
        if not held:
            return
        qty = min(STEP * n, abs(held))
        side = "SELL" if held > 0 else "BUY"
        engine.place_order(
            acct,
            symbol=SYMBOL,
            side=side,
            type="MARKET",
            quantity=qty,
            price=None,
            time_in_force=None,
            client_order_id=None,
            reduce_only=not hedge,
            position_side=ps if hedge else None,
        )
    elif kind == "autoclose":
        _, how, ps, n = step
        held = position(engine, acct, ps)
        if not held:
            return
        engine.autoclose(acct, SYMBOL, how, ps, qty=min(STEP * n, abs(held)))
    elif kind == "lag":
        engine.lag_position_reads(acct, step[2], step[1])
    else:
        compare(engine, acct, account)


def compare(engine, acct, account):
    report = Report(account_id=account.pk, kind=ReconcileRun.Kind.POSITIONS, reason="property")
    compare_positions(account, EngineClient(engine, acct), report)
    return report


@settings(max_examples=examples(60))
@given(hedge=st.booleans(), plan=st.lists(steps, min_size=1, max_size=14))
def test_exposure_per_side_equals_binances_position_after_a_read_that_does_not_lag(hedge, plan, settings):
    settings.POSITION_CONFIRM_SEC = 3600  # a real "gone" is always explained by fills here; reads are ms apart
    engine = Engine()
    acct = engine.create_account("key", "secret")
    if hedge:
        engine.set_position_mode(acct, True)
    with rolled_back():
        account = AccountFactory(api_key="key", api_secret="secret")
        for step in plan:
            try:
                run_step(engine, acct, account, step, hedge)
            except ApiError as exc:  # e.g. a minimum notional the engine refuses: Binance would too
                assert exc.code in (-4164, -2022), exc

        acct.lag_reads = 0  # the last read does not lag
        compare(engine, acct, account)

        explained = explained_by_trades(account.pk)
        sides = ("LONG", "SHORT") if hedge else ("BOTH",)
        for side in sides:
            assert explained.get((SYMBOL, side), Decimal("0")) == position(engine, acct, side), (side, plan)
        assert not OrphanPosition.objects.filter(account=account, status="open").exists(), plan
        for trade in Trade.objects.filter(account=account):
            assert Decimal("0") <= trade.closed_qty <= trade.filled_qty
            assert (trade.status == Trade.Status.CLOSED) == (trade.closed_qty == trade.filled_qty)
