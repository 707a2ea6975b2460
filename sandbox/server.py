"""The aiohttp application: Binance REST, the user-data WebSocket and the control API in one process."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from .control_api import ControlApi
from .engine import Engine
from .limits import Faults, OrderLimiter, Stats, WeightLimiter
from .rest import make_handler
from .ws import Hub

CHECK_INTERVAL_SEC = 0.1  # listenKey expiry and 24 h connection limit


class Exchange:
    """Everything one sandbox holds; `reset()` brings it back to a fresh start."""

    def __init__(self, weight_limit: int = 2400, clock_offset_ms: int = 0) -> None:
        self.engine = Engine(clock_offset_ms)
        self.limiter = WeightLimiter(weight_limit)
        self.orders = OrderLimiter()
        self.client_ip = ""  # the source address of the request being handled (exchangeInfo's limits)
        self.faults = Faults()
        self.stats = Stats()
        self.hub = Hub(self.engine)

    def reset(self) -> None:
        self.hub.reset()
        self.engine.reset()
        self.limiter.reset()
        self.orders.reset()
        self.faults.rules.clear()
        self.stats.reset()

    def check(self) -> None:
        self.engine.expire_due_listen_keys()
        self.hub.close_old_connections()


async def _checker(app: web.Application):
    ex: Exchange = app["exchange"]

    async def loop():
        while True:
            await asyncio.sleep(CHECK_INTERVAL_SEC)
            ex.check()

    task = asyncio.ensure_future(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_sockets(app: web.Application) -> None:
    app["exchange"].hub.reset()


def build_app(weight_limit: int = 2400, clock_offset_ms: int = 0) -> web.Application:
    ex = Exchange(weight_limit, clock_offset_ms)
    app = web.Application(client_max_size=1 << 20)
    app["exchange"] = ex
    rest = make_handler(ex)
    app.router.add_route("*", "/fapi/{tail:.*}", rest)
    app.router.add_get("/private/ws", ex.hub.handle)
    app.router.add_get("/private/ws/{listen_key}", ex.hub.handle)
    app.router.add_routes(ControlApi(ex).routes())
    app.cleanup_ctx.append(_checker)
    app.on_shutdown.append(_close_sockets)
    return app
