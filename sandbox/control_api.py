"""The control API under /_sandbox/ (JSON, loopback only): drive the exchange and inject faults.

Every handler answers JSON; errors are ``{"error": "..."}`` with 400/403/404/409.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from ipaddress import ip_address

from aiohttp import web

from .errors import ApiError
from .models import ZERO, Order

PREFIX = "/_sandbox"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _dec(value, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {value!r}") from None


class ControlApi:
    def __init__(self, ex) -> None:
        self.ex = ex
        self.engine = ex.engine

    def routes(self) -> list:
        r = [
            ("GET", "/health", self.health),
            ("POST", "/reset", self.reset),
            ("POST", "/accounts", self.create_account),
            ("POST", "/price", self.set_price),
            ("POST", "/orders/fill", self.fill),
            ("POST", "/orders/cancel", self.cancel),
            ("POST", "/orders/expire", self.expire),
            ("GET", "/orders", self.get_order),
            ("POST", "/orders/bulk", self.bulk_orders),
            ("GET", "/positions", self.positions),
            ("GET", "/listen_keys", self.listen_keys),
            ("POST", "/ws/drop", self.drop_connections),
            ("POST", "/ws/push", self.push_raw),
            ("POST", "/listen_keys/expire", self.expire_listen_key),
            ("POST", "/events/pause", self.pause),
            ("POST", "/events/resume", self.resume),
            ("POST", "/faults", self.add_fault),
            ("GET", "/faults", self.list_faults),
            ("DELETE", "/faults", self.clear_faults),
            ("POST", "/not_found_window", self.not_found_window),
            ("POST", "/cancel_race", self.cancel_race),
            ("POST", "/clock/advance", self.advance_clock),
            ("GET", "/clock", self.clock),
            ("POST", "/clock/offset", self.set_clock_offset),
            ("POST", "/orders/hide", self.hide_order),
            ("POST", "/leverage", self.set_leverage),
            ("POST", "/margin_call", self.margin_call),
            ("POST", "/algo_orders", self.algo_order),
            ("GET", "/stats", self.stats),
            ("POST", "/stats/reset", self.reset_stats),
            ("POST", "/weight_limit", self.weight_limit),
            ("POST", "/ban_time_scale", self.ban_time_scale),
            ("POST", "/positions/lag", self.lag_positions),
            ("POST", "/positions/autoclose", self.autoclose),
            ("POST", "/algo_orders/trigger", self.trigger_algo),
            ("GET", "/algo_orders", self.get_algo),
            ("POST", "/position_mode", self.position_mode),
        ]
        return [web.route(method, PREFIX + path, self._wrap(fn)) for method, path, fn in r]

    def _wrap(self, fn):
        async def handler(request: web.Request) -> web.Response:
            if not ip_address(request.remote or "0.0.0.0").is_loopback:
                return _error(403, "the control API answers loopback addresses only")
            try:
                data = await request.json() if request.can_read_body else {}
                data = {**dict(request.query), **(data or {})}
                return web.json_response(fn(data))
            except KeyError as err:
                return _error(400, f"missing field {err}")
            except ValueError as err:
                return _error(400, str(err))
            except LookupError as err:
                return _error(404, str(err))
            except ApiError as err:
                return _error(err.status if err.status != 400 else 409, f"{err.code} {err.msg}")

        return handler

    # --- helpers --------------------------------------------------------------------------------------
    def _account(self, data):
        api_key = data["api_key"]
        account = self.engine.accounts.get(api_key)
        if account is None:
            raise LookupError(f"no account {api_key}")
        return account

    def _order(self, data) -> tuple:
        account = self._account(data)
        order = self.engine.find_order(account, data["symbol"], data.get("order_id"), data.get("client_order_id"))
        if order is None:
            raise LookupError("no such order")
        return account, order

    # --- handlers ---------------------------------------------------------------------------------------
    def health(self, data):
        return {"ok": True, "server_time": self.engine.now()}

    def reset(self, data):
        self.ex.reset()
        return {"ok": True}

    def create_account(self, data):
        balance = str(_dec(data.get("balance", "100000"), "balance"))
        return self.engine.create_account(data.get("api_key"), data.get("api_secret"), balance).public()

    def set_price(self, data):
        filled = self.engine.set_price(
            data["symbol"], _dec(data["price"], "price"), fill_crossed=bool(data.get("fill_crossed", False))
        )
        return {
            "symbol": data["symbol"],
            "price": str(self.engine.symbols[data["symbol"]].price),
            "filled": [o.to_binance() for o in filled],
        }

    def fill(self, data):
        account, order = self._order(data)
        self.engine.fill(
            account,
            order,
            qty=_dec(data.get("qty"), "qty"),
            price=_dec(data.get("price"), "price"),
            maker=order.type == "LIMIT",
        )
        return order.to_binance()

    def cancel(self, data):
        account, order = self._order(data)
        return self.engine.finish(account, order, "CANCELED").to_binance()

    def expire(self, data):
        account, order = self._order(data)
        status = data.get("status", "EXPIRED")
        if status not in ("EXPIRED", "EXPIRED_IN_MATCH"):
            raise ValueError("status must be EXPIRED or EXPIRED_IN_MATCH")
        return self.engine.finish(account, order, status).to_binance()

    def get_order(self, data):
        account, order = self._order(data)
        return {**order.to_binance(), "archived": self.engine.is_archived(order, self.engine.now())}

    def bulk_orders(self, data):
        """Put `count` orders straight on the book (no auth, no events): for benchmarks needing 50k orders."""
        engine, account = self.engine, self._account(data)
        sym = engine.symbol(data["symbol"])
        count = int(data["count"])
        side, type_ = data.get("side", "BUY"), data.get("type", "LIMIT")
        qty = _dec(data.get("quantity"), "quantity") or sym.min_qty * 100
        price = _dec(data.get("price"), "price") or (sym.price * Decimal("0.9")).quantize(sym.tick)
        prefix = data.get("client_order_id_prefix", "bulk-")
        status = data.get("status", "NEW")
        now = engine.now()
        first = engine.next_order_id
        for _ in range(count):
            order = Order(
                engine.next_order_id,
                account.api_key,
                sym,
                f"{prefix}{engine.next_order_id}",
                side,
                type_,
                "GTC",
                qty,
                price if type_ == "LIMIT" else ZERO,
                False,
                now,
                now,
            )
            if status == "FILLED":
                order.status, order.executed_qty, order.cum_quote = "FILLED", qty, qty * price
            elif status != "NEW":
                order.status = status
            engine.next_order_id += 1
            account.orders[order.order_id] = order
            account.by_client_id[order.client_order_id] = order
        return {
            "count": count,
            "first_order_id": first,
            "last_order_id": engine.next_order_id - 1,
            "client_order_id_prefix": prefix,
        }

    def positions(self, data):
        account = self._account(data)
        return {
            "balance": str(account.balance),
            "dual_side_position": account.dual_side,
            "lag_reads": account.lag_reads,
            "positions": [p.risk_v3() for p in account.positions.values() if p.amount],
        }

    def lag_positions(self, data):
        """The next `count` positionRisk reads of the account lag: mode "omit" (no rows) or "stale" (as now)."""
        account = self._account(data)
        self.engine.lag_position_reads(account, int(data.get("count", 1)), str(data.get("mode", "omit")))
        return {"lag_reads": account.lag_reads, "mode": account.lag_mode}

    def autoclose(self, data):
        """Binance closes (part of) a position: kind liquidation, adl or settlement; qty defaults to all of it."""
        account = self._account(data)
        kind = str(data.get("kind", "liquidation"))
        if kind not in ("liquidation", "adl", "settlement"):
            raise ValueError("kind must be liquidation, adl or settlement")
        order = self.engine.autoclose(
            account,
            data["symbol"],
            kind,
            str(data.get("position_side", "BOTH")),
            qty=_dec(data.get("qty"), "qty"),
            price=_dec(data.get("price"), "price"),
        )
        return order.to_binance()

    def trigger_algo(self, data):
        """The algo order's condition is met (by algo_id or client_algo_id): it places its order; a MARKET one fills
        at `price` (default the symbol's)."""
        account = self._account(data)
        algo = self.engine.find_algo_order(account, data.get("algo_id"), data.get("client_algo_id"))
        return self.engine.trigger_algo_order(account, algo, _dec(data.get("price"), "price")).to_binance()

    def get_algo(self, data):
        account = self._account(data)
        return self.engine.find_algo_order(account, data.get("algo_id"), data.get("client_algo_id")).to_binance()

    def position_mode(self, data):
        """Switch hedge mode as the account's owner would on the web UI (same rules as the REST endpoint)."""
        account = self._account(data)
        self.engine.set_position_mode(account, bool(data["dual_side_position"]))
        return {"dual_side_position": account.dual_side}

    def listen_keys(self, data):
        account = self._account(data)
        now = self.engine.now()
        active = account.listen_key is not None and account.listen_key_expires > now
        return {
            "listen_key": account.listen_key if active else None,
            "expires_at": account.listen_key_expires if active else None,
            "connections": self.ex.hub.count(account.api_key),
            "events_paused": account.events_paused,
            "subscriptions": self.ex.hub.subscriptions(account.api_key),
            "peers": self.ex.hub.peers(account.api_key),
        }

    def drop_connections(self, data):
        return {"dropped": self.ex.hub.drop(self._account(data).api_key)}

    def push_raw(self, data):
        return {"sent": self.ex.hub.push_raw(self._account(data), str(data["raw"]))}

    def expire_listen_key(self, data):
        return {"expired": self.engine.expire_listen_key(self._account(data))}

    def pause(self, data):
        self._account(data).events_paused = True
        return {"events_paused": True}

    def resume(self, data):
        self._account(data).events_paused = False
        return {"events_paused": False}

    def add_fault(self, data):
        fault = self.ex.faults.add(
            data["path"],
            str(data["kind"]),
            int(data.get("count", 1)),
            data.get("method"),
            data.get("hang_sec"),
            data.get("retry_after"),
        )
        return fault.public()

    def list_faults(self, data):
        return {"faults": [f.public() for f in self.ex.faults.rules]}

    def clear_faults(self, data):
        self.ex.faults.rules.clear()
        return {"faults": []}

    def not_found_window(self, data):
        self.engine.not_found_window_ms = int(data["ms"])
        return {"ms": self.engine.not_found_window_ms}

    def cancel_race(self, data):
        account = self._account(data)
        if data.get("order_id") is None and data.get("client_order_id") is None:
            account.cancel_race_any = True
            return {"armed": "next cancel"}
        _, order = self._order(data)
        account.cancel_race_orders.add(order.order_id)
        return {"armed": order.order_id}

    def advance_clock(self, data):
        now = self.engine.advance_clock(int(data["ms"]))
        self.engine.expire_due_listen_keys()
        self.ex.hub.close_old_connections()
        return {"server_time": now, "offset_ms": self.engine.clock_offset_ms}

    def set_clock_offset(self, data):
        now = self.engine.set_clock_offset(int(data["ms"]))
        self.engine.expire_due_listen_keys()
        self.ex.hub.close_old_connections()
        return {"server_time": now, "offset_ms": self.engine.clock_offset_ms}

    def hide_order(self, data):
        _, order = self._order(data)
        return {"order_id": order.order_id, "hidden_until": self.engine.hide_order(order, float(data["seconds"]))}

    def set_leverage(self, data):
        return self.engine.set_leverage(self._account(data), data["symbol"], int(data["leverage"]))

    def margin_call(self, data):
        return self.engine.margin_call(self._account(data))

    def algo_order(self, data):
        return self.engine.algo_order(
            self._account(data),
            symbol=data["symbol"],
            side=data.get("side", "SELL"),
            quantity=_dec(data["quantity"], "quantity"),
            trigger_price=_dec(data["trigger_price"], "trigger_price"),
            order_type=data.get("type", "STOP_MARKET"),
        )

    def clock(self, data):
        return {"server_time": self.engine.now(), "offset_ms": self.engine.clock_offset_ms}

    def stats(self, data):
        now = self.engine.now()
        limiter = self.ex.limiter
        used = {ip: limiter.used(ip, now) for ip in limiter.windows}
        return {
            **self.ex.stats.public(),
            "used_weight_1m": used,
            "weight_limit": limiter.limit,
            "ip_weight_limits": dict(limiter.ip_limits),
            "bans": limiter.bans(),
            # {ip: {minute number (sandbox clock ms // 60,000): used weight}}, and {ip: {"429": n, "418": n}}
            "weight_by_minute": {ip: dict(minutes) for ip, minutes in limiter.history.items()},
            "refused_by_ip": {ip: dict(counts) for ip, counts in limiter.refused.items()},
        }

    def reset_stats(self, data):
        self.ex.stats.reset()
        self.ex.limiter.windows.clear()
        self.ex.limiter.history.clear()
        self.ex.limiter.refused.clear()
        self.ex.orders.reset()
        return {"ok": True}

    def weight_limit(self, data):
        """{"limit": n} for every IP, or {"limit": n, "ip": "127.0.0.2"} for one source address."""
        limiter = self.ex.limiter
        if data.get("ip"):
            limiter.ip_limits[str(data["ip"])] = int(data["limit"])
            return {"limit": int(data["limit"]), "ip": str(data["ip"])}
        limiter.limit = int(data["limit"])
        return {"limit": limiter.limit}

    def ban_time_scale(self, data):
        """Every IP ban lasts `scale` times Binance's length (tests: e.g. 0.01 makes the first ban 1.2 s)."""
        scale = float(data["scale"])
        if not 0 < scale <= 1:
            raise ValueError("scale must be in (0, 1]")
        self.ex.limiter.ban_time_scale = scale
        return {"scale": scale}
