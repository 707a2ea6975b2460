"""Plain data of the exchange (symbols, orders, positions, fills) and their Binance JSON shapes.

Decimals are kept as ``Decimal`` and rendered as strings at the symbol's precision, as Binance does.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)
OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})
FINAL_STATUSES = frozenset({"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"})
MAKER_FEE = Decimal("0.0002")
TAKER_FEE = Decimal("0.0005")
Q8 = Decimal("0.00000001")
_ALNUM = string.ascii_letters + string.digits


def q8(value: Decimal) -> str:
    """8 decimals, plain notation (never "0E-8")."""
    return format(value.quantize(Q8), "f")


def random_id(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _places(step: Decimal) -> int:
    """Decimal places of a (finite) tick or step size: 0.01 → 2, 1 → 0."""
    exponent = step.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN / Infinity: "n", "N", "F"
        raise ValueError(f"not a finite step: {step}")
    return max(0, -exponent)


@dataclass
class Symbol:
    symbol: str
    base: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    price: Decimal
    min_price: Decimal = Decimal("0.0001")
    max_price: Decimal = Decimal("1000000")

    def fmt_price(self, value: Decimal) -> str:
        return format(value.quantize(self.tick), "f") if value else "0"

    def fmt_avg(self, value: Decimal) -> str:
        return format(value.quantize(self.tick * Decimal("0.001")), "f")

    def fmt_qty(self, value: Decimal) -> str:
        return format(value.quantize(self.step), "f") if value else "0"

    def fmt_quote(self, value: Decimal) -> str:
        return format(value.quantize(self.tick * self.step), "f") if value else "0"

    def exchange_info(self) -> dict:
        price_prec, qty_prec = _places(self.tick), _places(self.step)
        return {
            "symbol": self.symbol,
            "pair": self.symbol,
            "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000,
            "status": "TRADING",
            "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000",
            "baseAsset": self.base,
            "quoteAsset": "USDT",
            "marginAsset": "USDT",
            "pricePrecision": price_prec,
            "quantityPrecision": qty_prec,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "underlyingSubType": [],
            "settlePlan": 0,
            "triggerProtect": "0.0500",
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": str(self.min_price),
                    "maxPrice": str(self.max_price),
                    "tickSize": str(self.tick),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": str(self.min_qty),
                    "maxQty": str(self.max_qty),
                    "stepSize": str(self.step),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": str(self.min_qty),
                    "maxQty": str(self.max_qty),
                    "stepSize": str(self.step),
                },
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                {"filterType": "MIN_NOTIONAL", "notional": str(self.min_notional)},
                {
                    "filterType": "PERCENT_PRICE",
                    "multiplierUp": "1.0500",
                    "multiplierDown": "0.9500",
                    "multiplierDecimal": "4",
                },
            ],
            "orderTypes": [
                "LIMIT",
                "MARKET",
                "STOP",
                "STOP_MARKET",
                "TAKE_PROFIT",
                "TAKE_PROFIT_MARKET",
                "TRAILING_STOP_MARKET",
            ],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        }


def default_symbols() -> dict[str, Symbol]:
    D = Decimal
    rows = [
        # symbol, base, tick, step, minQty, maxQty, price
        ("BTCUSDT", "BTC", D("0.10"), D("0.001"), D("0.001"), D("1000"), D("60000.00")),
        ("ETHUSDT", "ETH", D("0.01"), D("0.001"), D("0.001"), D("10000"), D("3000.00")),
        ("SOLUSDT", "SOL", D("0.0100"), D("1"), D("1"), D("1000000"), D("150.0000")),
        ("BNBUSDT", "BNB", D("0.010"), D("0.01"), D("0.01"), D("100000"), D("600.000")),
        ("XRPUSDT", "XRP", D("0.0001"), D("0.1"), D("0.1"), D("10000000"), D("0.5000")),
        ("DOGEUSDT", "DOGE", D("0.000010"), D("1"), D("1"), D("50000000"), D("0.150000")),
    ]
    # MIN_NOTIONAL is 5 USDT everywhere (Binance uses 100/20 for BTC/ETH): small test orders stay valid.
    return {r[0]: Symbol(r[0], r[1], r[2], r[3], r[4], r[5], D("5"), r[6], min_price=r[2]) for r in rows}


@dataclass(slots=True)
class Order:
    order_id: int
    account_key: str
    symbol: Symbol
    client_order_id: str
    side: str
    type: str
    time_in_force: str
    orig_qty: Decimal
    price: Decimal
    reduce_only: bool
    time: int
    update_time: int
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    price_match: str = "NONE"
    stp_mode: str = "EXPIRE_MAKER"
    good_till_date: int = 0
    position_side: str = "BOTH"  # BOTH in one-way mode; LONG or SHORT in hedge mode
    hidden_until: int = 0  # sandbox ms: until then queries answer -2013 and lists leave it out (see Engine)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO

    def to_binance(self) -> dict:
        """The shape of GET /fapi/v1/order and of each openOrders row (Binance "Query Order" and "Current All Open
        Orders" response examples)."""
        s = self.symbol
        return {
            "orderId": self.order_id,
            "symbol": s.symbol,
            "status": self.status,
            "clientOrderId": self.client_order_id,
            "price": s.fmt_price(self.price),
            "avgPrice": s.fmt_avg(self.avg_price),
            "origQty": s.fmt_qty(self.orig_qty),
            "executedQty": s.fmt_qty(self.executed_qty),
            "cumQuote": s.fmt_quote(self.cum_quote),
            "timeInForce": self.time_in_force,
            "type": self.type,
            "reduceOnly": self.reduce_only,
            "closePosition": False,
            "side": self.side,
            "positionSide": self.position_side,
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": self.type,
            "priceMatch": self.price_match,
            "selfTradePreventionMode": self.stp_mode,
            "goodTillDate": self.good_till_date,
            "time": self.time,
            "updateTime": self.update_time,
        }

    def to_binance_all_orders(self) -> dict:
        """One row of GET /fapi/v1/allOrders: the query shape plus ``cumBase`` and ``pair`` (binance-connector-python
        derivatives_trading_usds_futures 17.0.0, 2026-08-07: "all_orders(): property cumBase, pair added")."""
        return {**self.to_binance(), "cumBase": self.symbol.fmt_qty(self.executed_qty), "pair": self.symbol.symbol}

    def to_binance_ack(self) -> dict:
        """The answer to POST and DELETE /fapi/v1/order: no ``avgPrice`` nor ``cumQuote`` since Binance's 2026-07
        change (binance-connector-python derivatives_trading_usds_futures 14.0.0, 2026-07-15: "new_order() /
        cancel_order(): property avgPrice, cumQuote deleted"); ``cumQty`` as the New Order / Cancel Order examples."""
        answer = self.to_binance()
        del answer["avgPrice"], answer["cumQuote"], answer["time"]
        answer["cumQty"] = answer["executedQty"]
        return answer


CONDITIONAL_TYPES = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"})


@dataclass(slots=True)
class AlgoOrder:
    """A conditional order in Binance's Algo Service (New Algo Order, algoType CONDITIONAL): it rests outside the
    matching engine until triggered, then places an ordinary order (`actual_order`)."""

    algo_id: int
    symbol: Symbol
    client_algo_id: str
    side: str
    type: str
    position_side: str
    quantity: Decimal
    trigger_price: Decimal
    price: Decimal
    time_in_force: str
    reduce_only: bool
    close_position: bool
    create_time: int
    update_time: int
    status: str = "NEW"  # NEW, CANCELED, TRIGGERING, TRIGGERED, FINISHED, REJECTED, EXPIRED
    trigger_time: int = 0
    actual_order: Order | None = None

    def to_binance(self) -> dict:
        """The shape of POST/GET/DELETE /fapi/v1/algoOrder (New / Query Algo Order)."""
        s, actual = self.symbol, self.actual_order
        return {
            "algoId": self.algo_id,
            "clientAlgoId": self.client_algo_id,
            "algoType": "CONDITIONAL",
            "orderType": self.type,
            "symbol": s.symbol,
            "side": self.side,
            "positionSide": self.position_side,
            "timeInForce": self.time_in_force,
            "quantity": s.fmt_qty(self.quantity),
            "algoStatus": self.status,
            "actualOrderId": str(actual.order_id) if actual else "",
            "actualPrice": s.fmt_avg(actual.avg_price) if actual else "0",
            "triggerPrice": s.fmt_price(self.trigger_price),
            "price": s.fmt_price(self.price),
            "icebergQuantity": None,
            "tpTriggerPrice": "0",
            "tpPrice": "0",
            "slTriggerPrice": "0",
            "slPrice": "0",
            "tpOrderType": "",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": "CONTRACT_PRICE",
            "priceMatch": "NONE",
            "closePosition": self.close_position,
            "priceProtect": False,
            "reduceOnly": self.reduce_only,
            "createTime": self.create_time,
            "updateTime": self.update_time,
            "triggerTime": self.trigger_time,
            "goodTillDate": 0,
        }


@dataclass(slots=True)
class Position:
    symbol: Symbol
    amount: Decimal = ZERO  # signed: > 0 long, < 0 short (a SHORT row of hedge mode is ≤ 0, as on Binance)
    entry_price: Decimal = ZERO
    update_time: int = 0
    side: str = "BOTH"  # positionSide: BOTH (one-way mode) or LONG / SHORT (hedge mode)

    def unrealized(self) -> Decimal:
        return (self.symbol.price - self.entry_price) * self.amount if self.amount else ZERO

    def risk_v2(self) -> dict:
        s, amt = self.symbol, self.amount
        return {
            "symbol": s.symbol,
            "positionAmt": s.fmt_qty(amt),
            "entryPrice": s.fmt_avg(self.entry_price),
            "breakEvenPrice": s.fmt_avg(self.entry_price),
            "markPrice": s.fmt_avg(s.price),
            "unRealizedProfit": q8(self.unrealized()),
            "liquidationPrice": "0",
            "leverage": "20",
            "maxNotionalValue": "50000000",
            "marginType": "cross",
            "isolatedMargin": "0.00000000",
            "isAutoAddMargin": "false",
            "positionSide": self.side,
            "notional": q8(amt * s.price),
            "isolatedWallet": "0",
            "updateTime": self.update_time,
        }

    def risk_v3(self) -> dict:
        s, amt = self.symbol, self.amount
        notional = amt * s.price
        margin = abs(notional) / 20
        return {
            "symbol": s.symbol,
            "positionSide": self.side,
            "positionAmt": s.fmt_qty(amt),
            "entryPrice": s.fmt_avg(self.entry_price),
            "breakEvenPrice": s.fmt_avg(self.entry_price),
            "markPrice": s.fmt_avg(s.price),
            "unRealizedProfit": q8(self.unrealized()),
            "liquidationPrice": "0",
            "isolatedMargin": "0",
            "notional": q8(notional),
            "marginAsset": "USDT",
            "isolatedWallet": "0",
            "initialMargin": q8(margin),
            "maintMargin": q8(margin / 10),
            "positionInitialMargin": q8(margin),
            "openOrderInitialMargin": "0",
            "adl": 0,
            "bidNotional": "0",
            "askNotional": "0",
            "updateTime": self.update_time,
        }


@dataclass(slots=True)
class Fill:
    """One row of GET /fapi/v1/userTrades."""

    trade_id: int
    order: Order
    price: Decimal
    qty: Decimal
    realized_pnl: Decimal
    commission: Decimal
    maker: bool
    time: int

    def to_binance(self) -> dict:
        s = self.order.symbol
        return {
            "buyer": self.order.side == "BUY",
            "commission": q8(self.commission),
            "commissionAsset": "USDT",
            "id": self.trade_id,
            "maker": self.maker,
            "orderId": self.order.order_id,
            "price": s.fmt_price(self.price),
            "qty": s.fmt_qty(self.qty),
            "quoteQty": s.fmt_quote(self.price * self.qty),
            "baseQty": s.fmt_qty(self.qty),
            "marginAsset": "USDT",  # connector 17.0.0 (2026-08-07)
            "realizedPnl": q8(self.realized_pnl),
            "side": self.order.side,
            "positionSide": self.order.position_side,
            "symbol": s.symbol,
            "pair": s.symbol,
            "time": self.time,
        }


@dataclass
class Account:
    api_key: str
    api_secret: str
    balance: Decimal
    orders: dict[int, Order] = field(default_factory=dict)  # orderId -> Order (insertion = ascending id)
    by_client_id: dict[str, Order] = field(default_factory=dict)  # latest order per clientOrderId
    # (symbol, positionSide) -> Position; positionSide is BOTH in one-way mode, LONG / SHORT in hedge mode
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    dual_side: bool = False  # hedge mode ("dualSidePosition"); Binance's default is one-way
    # The next `lag_reads` positionRisk reads lag the matching engine: "omit" leaves the rows out, "stale" shows
    # the rows as they were when the lag was armed (`lag_rows`).
    lag_reads: int = 0
    lag_mode: str = "omit"
    lag_rows: list = field(default_factory=list)
    algo_orders: dict[int, AlgoOrder] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    leverage: dict[str, int] = field(default_factory=dict)  # symbol -> leverage (default 20)
    listen_key: str | None = None
    listen_key_expires: int = 0  # sandbox ms
    events_paused: bool = False
    cancel_race_any: bool = False
    cancel_race_orders: set[int] = field(default_factory=set)

    def public(self) -> dict:
        return {"api_key": self.api_key, "api_secret": self.api_secret, "balance": str(self.balance)}
