"""The exchange's state and rules: accounts, orders, fills, positions, listenKeys, the clock.

Pure Python, no I/O: the REST/WebSocket/control layers call it, and it reports user-data events through
``on_event(account, event)`` and listenKey ends through ``on_listen_key_gone(account, key, expired)``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from decimal import Decimal

from . import events
from .errors import LISTEN_KEY_MISSING, ORDER_NOT_FOUND, UNKNOWN_ORDER, ApiError
from .models import (
    CONDITIONAL_TYPES,
    MAKER_FEE,
    TAKER_FEE,
    ZERO,
    Account,
    AlgoOrder,
    Fill,
    Order,
    Position,
    Symbol,
    default_symbols,
    random_id,
)

DAY_MS = 86_400_000
LISTEN_KEY_TTL_MS = 60 * 60 * 1000
ARCHIVE_AFTER_MS = 3 * DAY_MS  # CANCELED/EXPIRED with no fill vanish from queries after 3 days
QUERY_WINDOW_MS = 7 * DAY_MS  # allOrders / userTrades: startTime..endTime must be < 7 days


def closes_hedge_side(side: str, position_side: str) -> bool:
    """Hedge mode: BUY opens LONG and closes SHORT; SELL opens SHORT and closes LONG."""
    return (side == "SELL") == (position_side == "LONG")


CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
ARCHIVABLE = frozenset({"CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"})


class Engine:
    def __init__(self, clock_offset_ms: int = 0) -> None:
        self.default_clock_offset_ms = int(clock_offset_ms)
        self.on_event: Callable[[Account, dict], None] = lambda account, event: None
        self.on_listen_key_gone: Callable[[Account, str, bool], None] = lambda account, key, expired: None
        self.reset()

    def reset(self) -> None:
        self.clock_offset_ms = self.default_clock_offset_ms
        self.symbols = default_symbols()
        self.accounts: dict[str, Account] = {}
        self.listen_keys: dict[str, Account] = {}
        self.next_order_id = 4_000_000_001  # past int32 on purpose, as Binance's ids are
        self.next_trade_id = 700_000_001
        self.next_algo_id = 3_000_000_001
        self.not_found_window_ms = 0

    # --- clock -------------------------------------------------------------------------------------
    def now(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def advance_clock(self, ms: int) -> int:
        self.clock_offset_ms += int(ms)
        return self.now()

    def set_clock_offset(self, ms: int) -> int:
        """The sandbox clock = the host's clock + ms (negative: the exchange is behind the host)."""
        self.clock_offset_ms = int(ms)
        return self.now()

    # --- accounts and symbols ----------------------------------------------------------------------
    def create_account(
        self, api_key: str | None = None, api_secret: str | None = None, balance: str = "100000"
    ) -> Account:
        api_key = api_key or random_id(64)
        if api_key in self.accounts:
            raise ApiError(-1, f"account {api_key} exists", 409)
        account = Account(api_key, api_secret or random_id(64), Decimal(str(balance)))
        self.accounts[api_key] = account
        return account

    def account(self, api_key: str) -> Account:
        try:
            return self.accounts[api_key]
        except KeyError:
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401) from None

    def symbol(self, name: str | None) -> Symbol:
        found = self.symbols.get(name) if name is not None else None
        if found is None:
            raise ApiError(-1121, "Invalid symbol.")
        return found

    # --- orders ------------------------------------------------------------------------------------
    def place_order(
        self,
        account: Account,
        *,
        symbol: str,
        side: str,
        type: str,
        quantity: Decimal,
        price: Decimal | None,
        time_in_force: str | None,
        client_order_id: str | None,
        reduce_only: bool,
        price_match: str = "NONE",
        stp_mode: str = "EXPIRE_MAKER",
        good_till_date: int = 0,
        position_side: str | None = None,
        fill_price: Decimal | None = None,
    ) -> Order:
        sym = self.symbol(symbol)
        position_side = self._check_position_side(account, position_side, reduce_only)
        if client_order_id is None:
            client_order_id = random_id(22)
        elif not CLIENT_ID_RE.match(client_order_id):
            raise ApiError(-4015, "Client order id is not valid.")
        self._check_quantity(sym, quantity)
        if type == "LIMIT":
            if price is None:
                raise ApiError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
            if time_in_force is None:
                raise ApiError(-1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
            self._check_price(sym, price)
            notional = price * quantity
        else:
            if price is not None:  # (a timeInForce sent with MARKET is ignored)
                raise ApiError(-1106, "Parameter 'price' sent when not required.")
            price, time_in_force, notional = ZERO, "GTC", sym.price * quantity
        if notional < sym.min_notional and not reduce_only:
            raise ApiError(
                -4164, f"Order's notional must be no smaller than {sym.min_notional} (unless you choose reduce only)."
            )
        existing = account.by_client_id.get(client_order_id)
        if existing is not None and existing.is_open:
            raise ApiError(-4116, "ClientOrderId is duplicated.")
        if reduce_only:
            pos = account.positions.get((symbol, "BOTH"))
            amount = pos.amount if pos else ZERO
            if amount == 0 or (amount > 0) == (side == "BUY"):
                raise ApiError(-2022, "ReduceOnly Order is rejected.")
        if position_side != "BOTH" and closes_hedge_side(side, position_side):
            # Hedge mode: SELL on LONG / BUY on SHORT closes that side and can never exceed it (Binance's
            # "Position Mode" FAQ: a close in hedge mode is reduce-only by construction).
            pos = account.positions.get((symbol, position_side))
            if pos is None or abs(pos.amount) < quantity:
                raise ApiError(-2022, "ReduceOnly Order is rejected.")
        now = self.now()
        order = Order(
            self.next_order_id,
            account.api_key,
            sym,
            client_order_id,
            side,
            type,
            time_in_force,
            quantity,
            price,
            reduce_only,
            now,
            now,
            price_match=price_match,
            stp_mode=stp_mode,
            good_till_date=good_till_date,
            position_side=position_side,
        )
        self.next_order_id += 1
        account.orders[order.order_id] = order
        account.by_client_id[client_order_id] = order
        self._emit_order(account, order, "NEW")
        if type == "MARKET":
            self.fill(account, order, price=sym.price if fill_price is None else fill_price, maker=False)
        elif time_in_force in ("IOC", "FOK"):
            crosses = (side == "BUY" and price >= sym.price) or (side == "SELL" and price <= sym.price)
            if crosses:
                self.fill(account, order, price=sym.price, maker=False)
            else:
                self.finish(account, order, "EXPIRED")
        return order

    @staticmethod
    def _check_position_side(account: Account, position_side: str | None, reduce_only: bool) -> str:
        """New Order (TRADE), parameter positionSide: "Default BOTH for One-way Mode; LONG or SHORT for Hedge
        Mode. It must be sent in Hedge Mode." A side that does not match the account's mode is -4061 (Error Codes:
        "Order's position side does not match user's setting."); reduceOnly "cannot be sent in Hedge Mode"
        (-1106, "Parameter 'reduceOnly' sent when not required.")."""
        if position_side is None:
            position_side = "BOTH"
        if position_side not in ("BOTH", "LONG", "SHORT"):
            raise ApiError(-1130, "Data sent for parameter 'positionSide' is not valid.")
        if (position_side == "BOTH") == account.dual_side:
            raise ApiError(-4061, "Order's position side does not match user's setting.")
        if account.dual_side and reduce_only:
            raise ApiError(-1106, "Parameter 'reduceOnly' sent when not required.")
        return position_side

    def set_position_mode(self, account: Account, dual: bool) -> None:
        """Change Position Mode (TRADE), POST /fapi/v1/positionSide/dual, for every symbol of the account. Error
        Codes: -4059 "No need to change position side.", -4067 with open orders, -4068 with a position."""
        if dual == account.dual_side:
            raise ApiError(-4059, "No need to change position side.")
        if any(o.is_open for o in account.orders.values()):
            raise ApiError(-4067, "Position side cannot be changed if there exists open orders.")
        if any(p.amount for p in account.positions.values()):
            raise ApiError(-4068, "Position side cannot be changed if there exists position.")
        account.dual_side = dual
        account.positions.clear()

    def position_rows(self, account: Account, symbol: str | None) -> list[dict]:
        """GET /fapi/v3/positionRisk: only symbols with a position or open orders (Binance's v3 note), one row per
        position side (LONG and SHORT in hedge mode). A lag armed by the control API answers from before."""
        if account.lag_reads > 0:
            account.lag_reads -= 1
            rows = account.lag_rows if account.lag_mode == "stale" else []
            return [dict(r) for r in rows if symbol is None or r["symbol"] == symbol]
        return self.current_position_rows(account, symbol)

    def current_position_rows(self, account: Account, symbol: str | None) -> list[dict]:
        sides = ("LONG", "SHORT") if account.dual_side else ("BOTH",)
        with_orders = {o.symbol.symbol for o in account.orders.values() if o.is_open}
        rows = []
        for name, sym in self.symbols.items():
            if symbol is not None and name != symbol:
                continue
            held = [account.positions.get((name, side)) for side in sides]
            if any(p is not None and p.amount for p in held) or name in with_orders:
                rows += [(p or Position(sym, side=side)).risk_v3() for p, side in zip(held, sides, strict=True)]
        return rows

    def lag_position_reads(self, account: Account, count: int, mode: str) -> None:
        """Binance's connector (Position Information V3): use it together with ACCOUNT_UPDATE "for timeliness and
        accuracy" — a read can lag the matching engine. The next `count` reads omit the rows, or repeat them as
        they are now ("stale")."""
        if mode not in ("omit", "stale"):
            raise ValueError("mode must be omit or stale")
        account.lag_reads, account.lag_mode = int(count), mode
        account.lag_rows = self.current_position_rows(account, None) if mode == "stale" else []

    def _check_quantity(self, sym, quantity: Decimal) -> None:
        if quantity <= 0:
            raise ApiError(-4003, "Quantity less than or equal to zero.")
        if quantity % sym.step:
            raise ApiError(-1111, "Precision is over the maximum defined for this asset.")
        if quantity < sym.min_qty:
            raise ApiError(-4004, "Quantity less than min quantity.")
        if quantity > sym.max_qty:
            raise ApiError(-4005, "Quantity greater than max quantity.")

    def _check_price(self, sym, price: Decimal) -> None:
        if price <= 0:
            raise ApiError(-4001, "Price less than 0.")
        if price < sym.min_price:
            raise ApiError(-4013, "Price less than min price.")
        if price > sym.max_price:
            raise ApiError(-4002, "Price greater than max price.")
        if (price - sym.min_price) % sym.tick:
            raise ApiError(-4014, "Price not increased by tick size.")

    def find_order(
        self, account: Account, symbol: str, order_id: int | None = None, client_order_id: str | None = None
    ) -> Order | None:
        """The true state of an order (no archival rule, no not-found window): for the control API."""
        if order_id is not None:
            order = account.orders.get(int(order_id))
        elif client_order_id is not None:
            order = account.by_client_id.get(client_order_id)
        else:
            raise ApiError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if order is None or order.symbol.symbol != symbol:
            return None
        return order

    def is_archived(self, order: Order, now: int) -> bool:
        return order.status in ARCHIVABLE and not order.executed_qty and now - order.update_time > ARCHIVE_AFTER_MS

    def query_order(self, account: Account, symbol: str, order_id, client_order_id) -> Order:
        """GET /fapi/v1/order: Binance's view, with the archival rule and the eventual-consistency window."""
        self.symbol(symbol)
        order = self.find_order(account, symbol, order_id, client_order_id)
        now = self.now()
        if (
            order is None
            or self.is_archived(order, now)
            or self.is_hidden(order, now)
            or (self.not_found_window_ms and now - order.time < self.not_found_window_ms)
        ):
            raise ApiError(*ORDER_NOT_FOUND)
        return order

    @staticmethod
    def is_hidden(order: Order, now: int) -> bool:
        """Binance answers -2013 for an order that exists, for minutes, after a timed-out or 503 placement (DESIGN
        §5 F20: reported in ccxt #6615 and nautilus_trader #3287); queries and lists miss it, the book does not."""
        return order.hidden_until > now

    def hide_order(self, order: Order, seconds: float) -> int:
        order.hidden_until = self.now() + int(float(seconds) * 1000)
        return order.hidden_until

    def cancel_order(self, account: Account, symbol: str, order_id, client_order_id) -> Order:
        self.symbol(symbol)
        order = self.find_order(account, symbol, order_id, client_order_id)
        if order is None or not order.is_open:
            raise ApiError(*UNKNOWN_ORDER)
        if account.cancel_race_any or order.order_id in account.cancel_race_orders:
            # "cancel loses the race": the order fills (fully) just before the cancel reaches the book.
            account.cancel_race_any = False
            account.cancel_race_orders.discard(order.order_id)
            self.fill(account, order, maker=True)
            raise ApiError(*UNKNOWN_ORDER)
        self.finish(account, order, "CANCELED")
        return order

    def open_orders(self, account: Account, symbol: str | None) -> list[Order]:
        if symbol is not None:
            self.symbol(symbol)
        now = self.now()
        return [
            o
            for o in account.orders.values()
            if o.is_open and (symbol is None or o.symbol.symbol == symbol) and not self.is_hidden(o, now)
        ]

    def all_orders(
        self, account: Account, symbol: str, order_id: int | None, start: int | None, end: int | None, limit: int
    ) -> list[Order]:
        self.symbol(symbol)
        now = self.now()
        from_start = start is not None
        start, end = self._window(start, end, now, default_recent=order_id is None)
        rows = [
            o
            for o in account.orders.values()
            if o.symbol.symbol == symbol
            and not self.is_archived(o, now)
            and not self.is_hidden(o, now)
            and (order_id is None or o.order_id >= order_id)
            and (start is None or o.time >= start)
            and (end is None or o.time <= end)
        ]
        # orderId or startTime given: oldest first from there; otherwise the most recent `limit`.
        if order_id is not None or from_start:
            return rows[:limit]
        return rows[-limit:]

    def user_trades(
        self,
        account: Account,
        symbol: str,
        order_id: int | None,
        start: int | None,
        end: int | None,
        from_id: int | None,
        limit: int,
    ) -> list[Fill]:
        self.symbol(symbol)
        now = self.now()
        if from_id is not None and (start is not None or end is not None):
            # Account Trade List: "The parameter fromId cannot be sent with startTime or endTime."
            raise ApiError(-1128, "Combination of optional parameters invalid.")
        if from_id is not None:
            rows = [f for f in account.fills if f.order.symbol.symbol == symbol and f.trade_id >= from_id]
            return rows[:limit]
        from_start = start is not None
        start, end = self._window(start, end, now, default_recent=order_id is None)
        rows = [
            f
            for f in account.fills
            if f.order.symbol.symbol == symbol
            and (order_id is None or f.order.order_id == order_id)
            and (start is None or f.time >= start)
            and (end is None or f.time <= end)
        ]
        return rows[:limit] if from_start else rows[-limit:]

    def _window(self, start, end, now, default_recent: bool):
        if start is not None and end is not None:
            if start > end:
                raise ApiError(-1023, "Start time is greater than end time.")
            if end - start >= QUERY_WINDOW_MS:
                raise ApiError(-4165, "Invalid time interval: the query time period must be less than 7 days.")
            return start, end
        if start is not None:
            return start, start + QUERY_WINDOW_MS - 1
        if end is not None:
            return end - QUERY_WINDOW_MS + 1, end
        return (now - QUERY_WINDOW_MS + 1, None) if default_recent else (None, None)

    # --- order life cycle (also driven by the control API) ------------------------------------------
    def fill(
        self,
        account: Account,
        order: Order,
        qty: Decimal | None = None,
        price: Decimal | None = None,
        maker: bool = True,
        exec_type: str = "TRADE",
    ) -> Order:
        if not order.is_open:
            raise ApiError(-2011, f"order {order.order_id} is {order.status}", 409)
        remaining = order.orig_qty - order.executed_qty
        qty = remaining if qty is None else Decimal(qty)
        if qty <= 0 or qty > remaining:
            raise ApiError(-1, f"fill qty {qty} not in (0, {remaining}]", 400)
        if qty % order.symbol.step:
            # Binance matches in whole lots (LOT_SIZE stepSize): a fill off the step cannot happen, and every answer
            # (executedQty, positionAmt, l/z on the stream) would round it away while the position kept it.
            raise ApiError(
                -1, f"fill qty {qty} is not a multiple of {order.symbol.symbol}'s step {order.symbol.step}", 400
            )
        if price is None:
            price = order.price if order.type == "LIMIT" else order.symbol.price
        price = Decimal(price)
        now = self.now()
        realized = self._apply_to_position(account, order, qty, price, now)
        commission = price * qty * (MAKER_FEE if maker else TAKER_FEE)
        account.balance += realized - commission
        order.executed_qty += qty
        order.cum_quote += price * qty
        order.status = "FILLED" if order.executed_qty == order.orig_qty else "PARTIALLY_FILLED"
        order.update_time = now
        fill = Fill(self.next_trade_id, order, price, qty, realized, commission, maker, now)
        self.next_trade_id += 1
        account.fills.append(fill)
        self._emit_account(account, account.positions[(order.symbol.symbol, order.position_side)], now)
        self._emit(account, events.trade_lite(order, fill, now))
        self._emit_order(account, order, exec_type, fill)
        return order

    def _apply_to_position(self, account: Account, order: Order, qty: Decimal, price: Decimal, now: int) -> Decimal:
        sym = order.symbol
        pos = account.positions.get((sym.symbol, order.position_side))
        if pos is None:
            pos = account.positions[(sym.symbol, order.position_side)] = Position(sym, side=order.position_side)
        signed = qty if order.side == "BUY" else -qty
        amount, realized = pos.amount, ZERO
        if amount == 0 or (amount > 0) == (signed > 0):  # open or increase: weighted average entry
            new_amount = amount + signed
            pos.entry_price = (abs(amount) * pos.entry_price + qty * price) / abs(new_amount)
        else:  # reduce, close or flip
            closed = min(abs(amount), qty)
            realized = (price - pos.entry_price) * closed * (1 if amount > 0 else -1)
            new_amount = amount + signed
            if new_amount == 0:
                pos.entry_price = ZERO
            elif (new_amount > 0) != (amount > 0):
                pos.entry_price = price
        pos.amount = new_amount
        pos.update_time = now
        return realized

    def autoclose(
        self,
        account: Account,
        symbol: str,
        kind: str,
        position_side: str = "BOTH",
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> Order:
        """Binance closing (part of) a position itself. User Data Streams, Event Order Update: a liquidation
        order's client order id starts "autoclose-" (order type LIQUIDATION, execution type CALCULATED), an ADL's
        is "adl_autoclose", a delisting/delivery settlement's starts "settlement_autoclose-"; each is pushed NEW,
        then filled, with ACCOUNT_UPDATE, and its fills are in userTrades like any other."""
        sym = self.symbol(symbol)
        pos = account.positions.get((symbol, position_side))
        if pos is None or not pos.amount:
            raise ApiError(-2022, f"no {symbol} {position_side} position to close", 409)
        qty = abs(pos.amount) if qty is None else Decimal(qty)
        if qty <= 0 or qty > abs(pos.amount):
            raise ValueError(f"qty {qty} not in (0, {abs(pos.amount)}]")
        now = self.now()
        client_id, type_, exec_type = {
            "liquidation": (f"autoclose-{now}{self.next_order_id % 1000:03d}", "LIQUIDATION", "CALCULATED"),
            "adl": ("adl_autoclose", "MARKET", "TRADE"),
            "settlement": (f"settlement_autoclose-{now}", "MARKET", "TRADE"),
        }[kind]
        side = "SELL" if pos.amount > 0 else "BUY"
        order = Order(
            self.next_order_id,
            account.api_key,
            sym,
            client_id,
            side,
            type_,
            "IOC",
            qty,
            ZERO,
            True,
            now,
            now,
            position_side=position_side,
        )
        self.next_order_id += 1
        account.orders[order.order_id] = order
        account.by_client_id.setdefault(client_id, order)  # "adl_autoclose" repeats: the first keeps the name
        self._emit_order(account, order, "NEW")
        return self.fill(account, order, price=sym.price if price is None else price, maker=False, exec_type=exec_type)

    # --- the Algo Service (conditional orders; USDⓈ-M "New Algo Order", "Event: Algo Order Update") -----------
    def place_algo_order(
        self,
        account: Account,
        *,
        symbol: str,
        side: str,
        type: str,
        quantity: Decimal | None,
        trigger_price: Decimal | None,
        price: Decimal | None,
        time_in_force: str | None,
        client_algo_id: str | None,
        reduce_only: bool,
        close_position: bool,
        position_side: str | None,
    ) -> AlgoOrder:
        sym = self.symbol(symbol)
        if type not in CONDITIONAL_TYPES:
            raise ApiError(-1116, "Invalid orderType.")
        position_side = self._check_position_side(account, position_side, reduce_only)
        if client_algo_id is None:
            client_algo_id = random_id(22)
        elif not CLIENT_ID_RE.match(client_algo_id):
            raise ApiError(-4015, "Client order id is not valid.")
        if close_position:
            if quantity is not None:
                raise ApiError(-1106, "Parameter 'quantity' sent when not required.")
            if type not in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
                raise ApiError(-1106, "Parameter 'closePosition' sent when not required.")
            quantity = ZERO
        else:
            if quantity is None:
                raise ApiError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
            self._check_quantity(sym, quantity)
        if type != "TRAILING_STOP_MARKET":
            if trigger_price is None:
                raise ApiError(-1102, "Mandatory parameter 'triggerPrice' was not sent, was empty/null, or malformed.")
            self._check_price(sym, trigger_price)
        if type in ("STOP", "TAKE_PROFIT"):
            if price is None:
                raise ApiError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
            self._check_price(sym, price)
        elif price is not None:
            raise ApiError(-1106, "Parameter 'price' sent when not required.")
        if any(a.client_algo_id == client_algo_id and a.status == "NEW" for a in account.algo_orders.values()):
            raise ApiError(-4116, "ClientOrderId is duplicated.")
        now = self.now()
        algo = AlgoOrder(
            self.next_algo_id,
            sym,
            client_algo_id,
            side,
            type,
            position_side,
            quantity,
            trigger_price or ZERO,
            price or ZERO,
            time_in_force or "GTC",
            reduce_only,
            close_position,
            now,
            now,
        )
        self.next_algo_id += 1
        account.algo_orders[algo.algo_id] = algo
        self._emit_algo(account, algo)
        return algo

    def find_algo_order(self, account: Account, algo_id=None, client_algo_id=None) -> AlgoOrder:
        if algo_id is not None:
            algo = account.algo_orders.get(int(algo_id))
        elif client_algo_id is not None:
            algo = next((a for a in reversed(account.algo_orders.values()) if a.client_algo_id == client_algo_id), None)
        else:
            raise ApiError(-1102, "Param 'clientAlgoId' or 'algoId' must be sent, but both were empty/null!")
        if algo is None:
            raise ApiError(*ORDER_NOT_FOUND)
        return algo

    def cancel_algo_order(self, account: Account, algo_id=None, client_algo_id=None) -> AlgoOrder:
        algo = self.find_algo_order(account, algo_id, client_algo_id)
        if algo.status != "NEW":
            raise ApiError(*UNKNOWN_ORDER)
        algo.status, algo.update_time = "CANCELED", self.now()
        self._emit_algo(account, algo)
        return algo

    def trigger_algo_order(self, account: Account, algo: AlgoOrder, price: Decimal | None = None) -> AlgoOrder:
        """The condition is met: TRIGGERING, then an ordinary order in the matching engine (TRIGGERED, "ai" its
        orderId), MARKET for the *_MARKET types and LIMIT at the algo's price otherwise; FINISHED once that order
        is done (a MARKET one fills at once, at `price` or the symbol's)."""
        if algo.status != "NEW":
            raise ApiError(-2011, f"algo order {algo.algo_id} is {algo.status}", 409)
        algo.status = "TRIGGERING"
        algo.trigger_time = algo.update_time = self.now()
        self._emit_algo(account, algo)
        market = algo.type.endswith("_MARKET")
        qty = algo.quantity
        if algo.close_position:
            pos = account.positions.get((algo.symbol.symbol, algo.position_side))
            qty = abs(pos.amount) if pos is not None else ZERO
        try:
            if qty <= 0:
                raise ApiError(-2022, "ReduceOnly Order is rejected.")
            order = self.place_order(
                account,
                symbol=algo.symbol.symbol,
                side=algo.side,
                type="MARKET" if market else "LIMIT",
                quantity=qty,
                price=None if market else algo.price,
                time_in_force=None if market else algo.time_in_force,
                client_order_id=None,
                # hedge mode: a close is reduce-only by its side and reduceOnly cannot be sent
                reduce_only=(algo.reduce_only or algo.close_position) and algo.position_side == "BOTH",
                position_side=None if algo.position_side == "BOTH" else algo.position_side,
                fill_price=price,
            )
        except ApiError as err:
            algo.status, algo.update_time = "REJECTED", self.now()
            self._emit_algo(account, algo)
            raise ApiError(err.code, err.msg, 409) from None
        algo.actual_order, algo.status, algo.update_time = order, "TRIGGERED", self.now()
        self._emit_algo(account, algo)
        if not order.is_open:
            algo.status, algo.update_time = "FINISHED", self.now()
            self._emit_algo(account, algo)
        return algo

    def _emit_algo(self, account: Account, algo: AlgoOrder) -> None:
        if not account.events_paused:
            self.on_event(account, events.algo_update(algo, self.now()))

    def finish(self, account: Account, order: Order, status: str) -> Order:
        """CANCELED / EXPIRED / EXPIRED_IN_MATCH: the order leaves the book with whatever it filled."""
        if not order.is_open:
            raise ApiError(-2011, f"order {order.order_id} is {order.status}", 409)
        order.status = status
        order.update_time = self.now()
        self._emit_order(account, order, "CANCELED" if status == "CANCELED" else "EXPIRED")
        return order

    def set_price(self, symbol: str, price, fill_crossed: bool = False) -> list[Order]:
        sym = self.symbol(symbol)
        sym.price = Decimal(str(price))
        filled = []
        if fill_crossed:
            for account in self.accounts.values():
                for order in list(account.orders.values()):
                    if (
                        order.is_open
                        and order.symbol is sym
                        and order.type == "LIMIT"
                        and (
                            (order.side == "BUY" and sym.price <= order.price)
                            or (order.side == "SELL" and sym.price >= order.price)
                        )
                    ):
                        filled.append(self.fill(account, order, maker=True))
        return filled

    # --- listenKeys ---------------------------------------------------------------------------------
    def listen_key_create(self, account: Account) -> str:
        now = self.now()
        if account.listen_key is None or account.listen_key_expires <= now:
            if account.listen_key is not None:
                self._drop_listen_key(account, expired=True)
            account.listen_key = random_id(64)
            self.listen_keys[account.listen_key] = account
        account.listen_key_expires = now + LISTEN_KEY_TTL_MS
        return account.listen_key

    def listen_key_keepalive(self, account: Account, key: str | None) -> str:
        if (
            account.listen_key is None
            or account.listen_key_expires <= self.now()
            or (key is not None and key != account.listen_key)
        ):
            raise ApiError(*LISTEN_KEY_MISSING)
        account.listen_key_expires = self.now() + LISTEN_KEY_TTL_MS
        return account.listen_key

    def listen_key_close(self, account: Account, key: str | None) -> None:
        if account.listen_key is None or (key is not None and key != account.listen_key):
            raise ApiError(*LISTEN_KEY_MISSING)
        self._drop_listen_key(account, expired=False)

    def expire_listen_key(self, account: Account) -> str | None:
        key = account.listen_key
        if key is not None:
            self._drop_listen_key(account, expired=True)
        return key

    def expire_due_listen_keys(self) -> None:
        now = self.now()
        for account in list(self.listen_keys.values()):
            if account.listen_key_expires <= now:
                self._drop_listen_key(account, expired=True)

    def _drop_listen_key(self, account: Account, expired: bool) -> None:
        key = account.listen_key
        if key is None:  # every caller checked that there is one
            return
        account.listen_key, account.listen_key_expires = None, 0
        self.listen_keys.pop(key, None)
        self.on_listen_key_gone(account, key, expired)

    def account_for_listen_key(self, key: str) -> Account | None:
        account = self.listen_keys.get(key)
        if account is None or account.listen_key_expires <= self.now():
            return None
        return account

    # --- account configuration, margin calls, algo orders (control API; events only) -----------------
    def set_leverage(self, account: Account, symbol: str, leverage: int) -> dict:
        """POST /fapi/v1/leverage's effect on the stream: an ACCOUNT_CONFIG_UPDATE."""
        self.symbol(symbol)
        if not 1 <= int(leverage) <= 125:
            raise ApiError(-4028, f"Leverage {leverage} is not valid")
        account.leverage[symbol] = int(leverage)
        event = events.account_config_update(symbol, int(leverage), self.now())
        self._emit(account, event)
        return event

    def margin_call(self, account: Account) -> dict:
        """The account's positions hit their margin call level: a MARGIN_CALL with every open position."""
        event = events.margin_call(account, [p for p in account.positions.values() if p.amount], self.now())
        self._emit(account, event)
        return event

    def algo_order(
        self, account: Account, *, symbol: str, side: str, quantity, trigger_price, order_type: str = "STOP_MARKET"
    ) -> dict:
        """A conditional order placed in the Algo service (as `POST /fapi/v1/algoOrder` would) -> its ALGO_UPDATE
        (NEW), which the stream carries too. The control API's short way to see the event arrive and be read."""
        algo = self.place_algo_order(
            account,
            symbol=symbol,
            side=side,
            type=order_type,
            quantity=Decimal(str(quantity)),
            trigger_price=Decimal(str(trigger_price)),
            price=None,
            time_in_force=None,
            client_algo_id=None,
            reduce_only=False,
            close_position=False,
            position_side=None,
        )
        return events.algo_update(algo, algo.update_time)

    # --- events -------------------------------------------------------------------------------------
    def _emit(self, account: Account, event: dict) -> None:
        if not account.events_paused:
            self.on_event(account, event)

    def _emit_order(self, account: Account, order: Order, exec_type: str, fill: Fill | None = None) -> None:
        if not account.events_paused:  # paused: lost for good, as events during a Binance outage are
            self.on_event(account, events.order_trade_update(order, exec_type, fill, self.now()))

    def _emit_account(self, account: Account, position: Position, now: int) -> None:
        if not account.events_paused:
            self.on_event(account, events.account_update(account, position, now))
