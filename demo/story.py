"""The story `make run` plays against the sandbox, with the real worker, beat and user stream running:

1. a fill during a WebSocket gap        → found by the reconcile the stream runs when it reconnects
2. a cancel that loses the race to a fill → found by the verification that follows every cancel
3. a partial fill, then the entry cancel → opened with the partial quantity
4. a fill lost while "the bot crashed"  → found by the periodic reconcile (celery-beat, every 60 s)

Each trade is created and placed the way the bot does it (services.create_pending_trade + place_entry_order), the
exchange is driven through the sandbox's control API, and the story only *watches* the database (polling with
deadlines): what corrects a trade is tradeops itself. At the end every demo trade is compared with the exchange's
order, and the outcome is written to var/demo-story.json (the `make run` smoke test reads it).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone

from reconciliation import services, tasks
from reconciliation.models import AccountSyncState, ReconcileRun
from reconciliation.stream.states import StreamState
from sandbox.control import SandboxControl, SandboxControlError
from trades.models import Account, Trade, TradeEvent

DEMO_ACCOUNT = "demo"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StoryError(RuntimeError):
    pass


@dataclass
class Chapter:
    title: str
    trade: Trade | None = None
    found_by: str = ""
    seconds: float = 0.0
    checks: dict = field(default_factory=dict)


def _d(value: Decimal) -> str:
    """0.0100000000 → 0.01, 60000.0000000000 → 60000 (normalize() alone would say 6E+4)."""
    return f"{value.normalize():f}"


def sandbox_url() -> str:
    url = settings.BINANCE_FUTURES_REST_URL
    if urlsplit(url).hostname not in LOOPBACK:
        raise StoryError(f"BINANCE_FUTURES_REST_URL={url} is not a local sandbox: the demo never talks to Binance")
    return url


class Story:
    def __init__(
        self,
        *,
        admin_url: str,
        out=print,
        timeout: float = 150.0,
        stream_timeout: float = 60.0,
        stop: threading.Event | None = None,
    ):
        if not settings.DEBUG:
            raise StoryError("the demo story runs only with DJANGO_DEBUG on (make run)")
        self.control = SandboxControl(sandbox_url())
        self.admin_url = admin_url
        self.out = out
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.chapters: list[Chapter] = []
        self.account: Account | None = None
        self.stop = stop or threading.Event()  # set on SIGINT/SIGTERM: every wait gives up at once

    # --- helpers ----------------------------------------------------------------------------------------------------
    @property
    def demo_account(self) -> Account:
        assert self.account is not None, "setup() loads the demo account before any chapter runs"
        return self.account

    def say(self, text: str = "") -> None:
        self.out(text)

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.25):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StoryError(f"timed out after {timeout:.0f}s waiting for {what}")
            if self.stop.wait(interval):
                raise StoryError("stopped")

    def stream_state(self) -> str:
        state = AccountSyncState.objects.filter(account=self.account).first()
        return state.stream_state if state else ""

    def place(self, symbol: str, side: str, qty: str, price: str) -> Trade:
        """What the bot does: a pending trade, then the order on the exchange with its client order id."""
        trade = services.create_pending_trade(self.demo_account, symbol, side, Decimal(qty), Decimal(price))
        services.place_entry_order(trade)
        trade.refresh_from_db()
        self.say(
            f"   placed trade #{trade.pk}: {side} {qty} {symbol} @ {price} (client order id "
            f"{trade.client_order_id}); database says {trade.status}"
        )
        return trade

    def watch(self, chapter: Chapter, started: float, *, timeout: float | None = None, qty: str | None = None):
        trade = chapter.trade
        assert trade is not None, "a chapter is watched once its trade is placed"

        def settled():
            trade.refresh_from_db()
            return trade.status == Trade.Status.OPEN and (qty is None or trade.filled_qty == Decimal(qty))

        self.wait(settled, timeout or self.timeout, f"trade #{trade.pk} to open")
        chapter.seconds = time.monotonic() - started
        event = trade.events.filter(to_status=Trade.Status.OPEN).order_by("-created_at", "-pk").first()
        chapter.found_by = event.source if event else "?"
        if event and event.source == TradeEvent.Source.RECONCILE:
            # The run's row is written when it finishes, just after the event: the first one from then on.
            def run_row():
                return (
                    ReconcileRun.objects.filter(account=self.account, started_at__gte=event.created_at)
                    .order_by("started_at")
                    .first()
                )

            try:
                chapter.found_by = f"reconcile (reason={self.wait(run_row, 10, 'the reconcile report').reason})"
            except StoryError:
                pass
        self.say(
            f"   ✔ corrected after {chapter.seconds:.1f}s by {chapter.found_by}: trade #{trade.pk} pending → "
            f"open, {_d(trade.filled_qty)} @ {_d(trade.entry_price) if trade.entry_price else '?'}"
        )
        self.say(f"     {self.admin_url}trades/trade/{trade.pk}/change/")

    # --- the story --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.wait(self._sandbox_up, 30, "the sandbox")
        self.account = Account.objects.get(name=DEMO_ACCOUNT)
        try:
            self.control.create_account(api_key=self.account.api_key, api_secret=self.account.api_secret)
        except SandboxControlError as exc:
            if exc.status != 409:  # 409: already there (the story ran before against this sandbox)
                raise
        self.say(f"== demo account {self.account.name!r} is ready in the sandbox; waiting for its user stream…")
        try:
            self.wait(lambda: self.stream_state() == StreamState.CONNECTED, self.stream_timeout, "the user stream")
            connected_at = AccountSyncState.objects.get(account=self.account).stream_state_at
            # The reconcile and the position sync (it reconciles too) every (re)connect runs: let them pass first,
            # so what follows is found by its own path.
            for kind in (ReconcileRun.Kind.PENDING, ReconcileRun.Kind.POSITIONS):
                self.wait(
                    lambda kind=kind: (
                        ReconcileRun.objects.filter(
                            account=self.account,
                            reason="ws_connect",
                            kind=kind,
                            started_at__gte=connected_at,
                        )
                        .exclude(outcome=ReconcileRun.Outcome.SKIPPED)
                        .exists()
                    ),  # a skipped one is retried: wait for that
                    30,
                    f"the {kind} run that follows the stream's connect",
                )
            self.say("   user stream connected, and its first reconcile has run")
        except StoryError:
            self.say(
                f"   the user stream is not connected ({self.stream_state() or 'no state'}); carrying on — the "
                "reconciles still find every fill"
            )

    def _sandbox_up(self):
        try:
            return self.control.health().get("ok")
        except Exception:  # noqa: BLE001 — not up yet
            return False

    def websocket_gap(self) -> None:
        chapter = Chapter("a fill during a WebSocket gap")
        self.chapters.append(chapter)
        self.say(f"\n== 1. {chapter.title}")
        chapter.trade = self.place("BTCUSDT", "BUY", "0.010", "60000")
        key = self.demo_account.api_key
        self.control.pause_events(key)
        self.control.drop_connections(key)
        started = time.monotonic()
        self.control.fill_order(key, "BTCUSDT", client_order_id=chapter.trade.client_order_id)
        self.control.resume_events(key)
        self.say("   the exchange cut the stream, and the order filled before it came back: no event will ever say so")
        self.watch(chapter, started)

    def cancel_race(self) -> None:
        chapter = Chapter("a cancel that loses the race to a fill")
        self.chapters.append(chapter)
        self.say(f"\n== 2. {chapter.title}")
        chapter.trade = self.place("ETHUSDT", "SELL", "0.050", "3000")
        key = self.demo_account.api_key
        self.control.pause_events(key)  # so that only the post-cancel verification can see the fill
        try:
            self.control.arm_cancel_race(key, "ETHUSDT", client_order_id=chapter.trade.client_order_id)
            started = time.monotonic()
            tasks.cancel_and_verify.delay(chapter.trade.pk)
            self.say(
                "   the entry timed out: cancel_and_verify enqueued; the order fills first, the cancel answers "
                "-2011 (and the stream is quiet)"
            )
            self.watch(chapter, started)
        finally:
            self.control.resume_events(key)

    def partial_then_cancel(self) -> None:
        chapter = Chapter("a partial fill, then the entry cancel")
        self.chapters.append(chapter)
        self.say(f"\n== 3. {chapter.title}")
        chapter.trade = self.place("BNBUSDT", "BUY", "0.50", "600")
        key = self.demo_account.api_key
        self.control.fill_order(key, "BNBUSDT", client_order_id=chapter.trade.client_order_id, qty="0.20")
        self.say("   0.20 of 0.50 filled on the exchange")
        trade = chapter.trade

        def partly_filled() -> bool:
            trade.refresh_from_db()
            return trade.filled_qty > 0

        try:
            self.wait(partly_filled, 10, "the stream to report the partial fill")
            self.say(f"   the stream reported it: still pending, filled {_d(trade.filled_qty)}")
        except StoryError:
            self.say("   (the stream did not report it; the cancel's verification will)")
        started = time.monotonic()
        tasks.cancel_and_verify.delay(chapter.trade.pk)
        self.say("   the entry timed out: cancel_and_verify enqueued")
        self.watch(chapter, started, qty="0.20")

    def quiet(self, window: float = 4.0, timeout: float = 30.0) -> None:
        """Wait until no reconcile has run for `window` seconds: the position syncs the stream asks for after fills
        (debounced) also reconcile pending trades, and would find the next chapter's fill before beat does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = ReconcileRun.objects.filter(account=self.account).count()
            if self.stop.wait(window):
                raise StoryError("stopped")
            if ReconcileRun.objects.filter(account=self.account).count() == before:
                return

    def bot_crash(self) -> None:
        chapter = Chapter("a fill lost while the bot crashed")
        self.chapters.append(chapter)
        self.say(f"\n== 4. {chapter.title}")
        self.quiet()
        key = self.demo_account.api_key
        self.control.pause_events(key)  # the stream misses it too: nothing pushes this fill anywhere
        try:
            chapter.trade = self.place("SOLUSDT", "BUY", "2", "150")
            started = time.monotonic()
            self.control.fill_order(key, "SOLUSDT", client_order_id=chapter.trade.client_order_id)
        finally:
            self.control.resume_events(key)
        self.say(
            "   the bot crashed while waiting; the order filled; its event was lost. Only the periodic reconcile "
            "(celery-beat, every 60 s) can find it now — waiting…"
        )
        self.watch(chapter, started)

    def verdict(self) -> bool:
        self.say("\n== every demo trade against the exchange's order")
        all_ok = True
        for chapter in self.chapters:
            trade = chapter.trade
            assert trade is not None, "the verdict comes only after every chapter placed its trade"
            trade.refresh_from_db()
            order = self.control.get_order(
                self.demo_account.api_key, trade.symbol, client_order_id=trade.client_order_id
            )
            checks = {
                "status": trade.status == Trade.Status.OPEN and order["status"] in ("FILLED", "CANCELED"),
                "filled_qty": trade.filled_qty == Decimal(order["executedQty"]),
                "avg_price": trade.entry_price == Decimal(order["avgPrice"]),
                "one_event_to_open": trade.events.filter(to_status=Trade.Status.OPEN).count() == 1,
            }
            chapter.checks = {
                "ok": all(checks.values()),
                **checks,
                "exchange": {
                    "status": order["status"],
                    "executed_qty": order["executedQty"],
                    "avg_price": order["avgPrice"],
                },
            }
            all_ok &= chapter.checks["ok"]
            mark = "✔" if chapter.checks["ok"] else "✘"
            self.say(
                f"   {mark} #{trade.pk} {trade.symbol}: database {trade.status} {_d(trade.filled_qty)} @ "
                f"{_d(trade.entry_price) if trade.entry_price else '?'} — exchange {order['status']} "
                f"{order['executedQty']} @ {order['avgPrice']}"
            )
        return all_ok

    def play(self) -> dict:
        started_at = timezone.now()
        error = ""
        ok = False
        try:
            self.setup()
            self.websocket_gap()
            self.cancel_race()
            self.partial_then_cancel()
            self.bot_crash()
            ok = self.verdict()
        except StoryError as exc:
            error = str(exc)
            self.say(f"\n!! the story stopped: {error}")
        result = {
            "ok": ok,
            "error": error,
            "started_at": started_at.isoformat(),
            "finished_at": timezone.now().isoformat(),
            "admin_url": self.admin_url,
            "account": DEMO_ACCOUNT,
            "chapters": [
                {
                    "title": c.title,
                    "trade_id": c.trade.pk if c.trade else None,
                    "found_by": c.found_by,
                    "seconds": round(c.seconds, 2),
                    "checks": c.checks,
                }
                for c in self.chapters
            ],
        }
        path = settings.VAR_DIR / "demo-story.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        self.say(
            f"\n== story {'done: every demo trade agrees with the exchange' if ok else 'FAILED'} (written to {path})"
        )
        self.say(
            f"   browse it in the admin: {self.admin_url}  (credentials printed above by `make run`, "
            f"kept in {settings.VAR_DIR / 'dev-admin-password'})"
        )
        return result
