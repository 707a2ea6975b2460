"""The exchange's state and rules: accounts, orders, fills, positions, listenKeys, the clock.

Pure Python, no I/O: the REST/WebSocket/control layers call it, and it reports user-data events through
``on_event(account, event)`` and listenKey ends through ``on_listen_key_gone(account, key, expired)``.
"""
from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Callable

from . import events
from .errors import ORDER_NOT_FOUND, UNKNOWN_ORDER, ApiError, LISTEN_KEY_MISSING
from .models import (MAKER_FEE, TAKER_FEE, ZERO, Account, Fill, Order, Position, default_symbols,
                     random_id)

DAY_MS = 86_400_000
LISTEN_KEY_TTL_MS = 60 * 60 * 1000
ARCHIVE_AFTER_MS = 3 * DAY_MS        # CANCELED/EXPIRED with no fill vanish from queries after 3 days
QUERY_WINDOW_MS = 7 * DAY_MS         # allOrders / userTrades: startTime..endTime must be < 7 days
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
        self.next_order_id = 4_000_000_001   # past int32 on purpose, as Binance's ids are
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
    def create_account(self, api_key: str | None = None, api_secret: str | None = None,
                       balance: str = "100000") -> Account:
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

    def symbol(self, name: str | None):
        try:
            return self.symbols[name]
        except KeyError:
            raise ApiError(-1121, "Invalid symbol.") from None

    # --- orders ------------------------------------------------------------------------------------
    def place_order(self, account: Account, *, symbol: str, side: str, type: str, quantity: Decimal,
                    price: Decimal | None, time_in_force: str | None, client_order_id: str | None,
                    reduce_only: bool, price_match: str = "NONE", stp_mode: str = "EXPIRE_MAKER",
                    good_till_date: int = 0) -> Order:
        sym = self.symbol(symbol)
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
            if price is not None:       # (a timeInForce sent with MARKET is ignored)
                raise ApiError(-1106, "Parameter 'price' sent when not required.")
            price, time_in_force, notional = ZERO, "GTC", sym.price * quantity
        if notional < sym.min_notional and not reduce_only:
            raise ApiError(-4164, f"Order's notional must be no smaller than {sym.min_notional} "
                                  "(unless you choose reduce only).")
        existing = account.by_client_id.get(client_order_id)
        if existing is not None and existing.is_open:
            raise ApiError(-4116, "ClientOrderId is duplicated.")
        if reduce_only:
            pos = account.positions.get(symbol)
            amount = pos.amount if pos else ZERO
            if amount == 0 or (amount > 0) == (side == "BUY"):
                raise ApiError(-2022, "ReduceOnly Order is rejected.")
        now = self.now()
        order = Order(self.next_order_id, account.api_key, sym, client_order_id, side, type, time_in_force,
                      quantity, price, reduce_only, now, now, price_match=price_match, stp_mode=stp_mode,
                      good_till_date=good_till_date)
        self.next_order_id += 1
        account.orders[order.order_id] = order
        account.by_client_id[client_order_id] = order
        self._emit_order(account, order, "NEW")
        if type == "MARKET":
            self.fill(account, order, price=sym.price, maker=False)
        elif time_in_force in ("IOC", "FOK"):
            crosses = (side == "BUY" and price >= sym.price) or (side == "SELL" and price <= sym.price)
            if crosses:
                self.fill(account, order, price=sym.price, maker=False)
            else:
                self.finish(account, order, "EXPIRED")
        return order

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

    def find_order(self, account: Account, symbol: str, order_id: int | None = None,
                   client_order_id: str | None = None) -> Order | None:
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
        return (order.status in ARCHIVABLE and not order.executed_qty
                and now - order.update_time > ARCHIVE_AFTER_MS)

    def query_order(self, account: Account, symbol: str, order_id, client_order_id) -> Order:
        """GET /fapi/v1/order: Binance's view, with the archival rule and the eventual-consistency window."""
        self.symbol(symbol)
        order = self.find_order(account, symbol, order_id, client_order_id)
        now = self.now()
        if (order is None or self.is_archived(order, now) or self.is_hidden(order, now)
                or (self.not_found_window_ms and now - order.time < self.not_found_window_ms)):
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
        return [o for o in account.orders.values() if o.is_open and (symbol is None or o.symbol.symbol == symbol)
                and not self.is_hidden(o, now)]

    def all_orders(self, account: Account, symbol: str, order_id: int | None, start: int | None,
                   end: int | None, limit: int) -> list[Order]:
        self.symbol(symbol)
        now = self.now()
        from_start = start is not None
        start, end = self._window(start, end, now, default_recent=order_id is None)
        rows = [o for o in account.orders.values()
                if o.symbol.symbol == symbol and not self.is_archived(o, now) and not self.is_hidden(o, now)
                and (order_id is None or o.order_id >= order_id)
                and (start is None or o.time >= start) and (end is None or o.time <= end)]
        # orderId or startTime given: oldest first from there; otherwise the most recent `limit`.
        if order_id is not None or from_start:
            return rows[:limit]
        return rows[-limit:]

    def user_trades(self, account: Account, symbol: str, order_id: int | None, start: int | None,
                    end: int | None, from_id: int | None, limit: int) -> list[Fill]:
        self.symbol(symbol)
        now = self.now()
        if from_id is not None:
            rows = [f for f in account.fills if f.order.symbol.symbol == symbol and f.trade_id >= from_id]
            return rows[:limit]
        from_start = start is not None
        start, end = self._window(start, end, now, default_recent=order_id is None)
        rows = [f for f in account.fills if f.order.symbol.symbol == symbol
                and (order_id is None or f.order.order_id == order_id)
                and (start is None or f.time >= start) and (end is None or f.time <= end)]
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
    def fill(self, account: Account, order: Order, qty: Decimal | None = None, price: Decimal | None = None,
             maker: bool = True) -> Order:
        if not order.is_open:
            raise ApiError(-2011, f"order {order.order_id} is {order.status}", 409)
        remaining = order.orig_qty - order.executed_qty
        qty = remaining if qty is None else Decimal(qty)
        if qty <= 0 or qty > remaining:
            raise ApiError(-1, f"fill qty {qty} not in (0, {remaining}]", 400)
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
        self._emit_account(account, order.symbol.symbol, now)
        self._emit(account, events.trade_lite(order, fill, now))
        self._emit_order(account, order, "TRADE", fill)
        return order

    def _apply_to_position(self, account: Account, order: Order, qty: Decimal, price: Decimal, now: int) -> Decimal:
        sym = order.symbol
        pos = account.positions.get(sym.symbol)
        if pos is None:
            pos = account.positions[sym.symbol] = Position(sym)
        signed = qty if order.side == "BUY" else -qty
        amount, realized = pos.amount, ZERO
        if amount == 0 or (amount > 0) == (signed > 0):        # open or increase: weighted average entry
            new_amount = amount + signed
            pos.entry_price = (abs(amount) * pos.entry_price + qty * price) / abs(new_amount)
        else:                                                   # reduce, close or flip
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
                    if (order.is_open and order.symbol is sym and order.type == "LIMIT"
                            and ((order.side == "BUY" and sym.price <= order.price)
                                 or (order.side == "SELL" and sym.price >= order.price))):
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
        if (account.listen_key is None or account.listen_key_expires <= self.now()
                or (key is not None and key != account.listen_key)):
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

    def algo_order(self, account: Account, *, symbol: str, side: str, quantity, trigger_price,
                   status: str = "NEW", order_type: str = "STOP_MARKET") -> dict:
        """An algo (conditional) order's update as the Algo service reports it: ALGO_UPDATE only (the sandbox does
        not trigger algo orders; enough to see the event arrive and be read)."""
        sym = self.symbol(symbol)
        algo_id, now = self.next_algo_id, self.now()
        self.next_algo_id += 1
        algo = {
            "caid": f"algo-{algo_id}", "aid": algo_id, "at": "CONDITIONAL", "o": order_type, "s": sym.symbol,
            "S": side, "ps": "BOTH", "f": "GTC", "q": sym.fmt_qty(Decimal(str(quantity))), "X": status, "ai": "",
            "ap": "0", "aq": "0", "act": "0", "tp": sym.fmt_price(Decimal(str(trigger_price))), "p": "0",
            "V": "EXPIRE_MAKER", "wt": "CONTRACT_PRICE", "pm": "NONE", "cp": False, "pP": False, "R": False,
            "tt": 0, "gtd": 0, "rm": "",
        }
        event = events.algo_update(algo, now)
        self._emit(account, event)
        return event

    # --- events -------------------------------------------------------------------------------------
    def _emit(self, account: Account, event: dict) -> None:
        if not account.events_paused:
            self.on_event(account, event)

    def _emit_order(self, account: Account, order: Order, exec_type: str, fill: Fill | None = None) -> None:
        if not account.events_paused:      # paused: lost for good, as events during a Binance outage are
            self.on_event(account, events.order_trade_update(order, exec_type, fill, self.now()))

    def _emit_account(self, account: Account, symbol: str, now: int) -> None:
        if not account.events_paused:
            self.on_event(account, events.account_update(account, account.positions[symbol], now))

