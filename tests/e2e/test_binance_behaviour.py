"""docs/DESIGN.md "What Binance really does" — Binance as it really behaves — on the real stack (sandbox, Celery workers, the user stream, MariaDB,
Redis). Each row fails on the code before the sandbox was made strict and the product fixed, and passes after."""

import json
import shutil
import uuid
from decimal import Decimal

import pytest
from websockets.sync.client import connect

from reconciliation import tasks
from reconciliation.stream.connection import stream_url
from trades.binance_client import BinanceFuturesClient
from trades.models import Trade, TradeEvent

from .harness import wait_for
from .test_fault_matrix import FAR, fill, open_position, status_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_f18_the_bots_own_stream_survives_our_shutdown(e2e):
    """Binance keeps one listenKey per account, shared with the bot's own consumer; a DELETE closes every socket on
    it. tradeops never DELETEs: stopping its stream leaves the bot's socket open and hearing."""
    account = e2e.account()
    trade = open_position(e2e, account, timeout_sec=FAR)
    with BinanceFuturesClient.for_account(account) as bot:
        key = bot.create_listen_key()  # the account's one key: the same our stream uses
    assert key == e2e.control.listen_keys(account.api_key)["listen_key"]
    with connect(stream_url(e2e.stack.exchange.ws_url, key, ["ORDER_TRADE_UPDATE"]), open_timeout=5) as bots_socket:
        wait_for(lambda: e2e.control.listen_keys(account.api_key)["connections"] == 2, message="both connected")

        e2e.stack.stop("stream")  # SIGTERM: a deploy, a restart

        assert "event=stopped" in e2e.stack.log("stream")
        assert e2e.control.listen_keys(account.api_key)["connections"] == 1  # ours closed, the bot's not
        assert "DELETE /fapi/v1/listenKey" not in e2e.control.stats()["requests"]
        fill(e2e, trade)
        while True:  # the bot still hears its fills
            event = json.loads(bots_socket.recv(timeout=10))
            if event["o"]["c"] == trade.client_order_id and event["o"]["X"] == "FILLED":
                break
    e2e.stack.start_stream()  # and ours, back, finds the fill it missed by its connect reconcile
    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="reconcile on reconnect opened it")
    e2e.settle()


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs libfaketime's faketime (apt-get install faketime)")
def test_f19_a_worker_2s_ahead_of_binance_still_places_and_cancels(e2e):
    """Binance refuses a signed request stamped more than 1 s ahead of its clock (-1021, not executed). Each task
    builds a fresh gateway: it must use the process's synced offset, or its first (for a placement, only) call
    fails — the entry was never sent, the timeout's cancel never reached the order."""
    account = e2e.account()
    readies = {name: e2e.stack.log(name).count("ready.") for name in ("worker1", "worker2")}
    for name in ("worker1", "worker2"):
        e2e.stack.stop(name)
    try:
        e2e.stack.start_worker("drifting", clock_ahead_sec=2)
        wait_for(lambda: "ready." in e2e.stack.log("drifting"), timeout=60, message="the drifting worker ready")
        e2e.control.reset_stats()

        trade = open_position(e2e, account, timeout_sec=3)  # placed by the drifting worker; nobody fills it
        wait_for(
            lambda: status_of(trade) == Trade.Status.CANCELLED,
            timeout=60,
            message="the entry timeout's cancel, verified",
        )
        trade.refresh_from_db()
        assert trade.exchange_status == "CANCELED"
        requests_seen = e2e.control.stats()["requests"]
        assert requests_seen["POST /fapi/v1/order"] == 1 and requests_seen["DELETE /fapi/v1/order"] == 1
        assert requests_seen["GET /fapi/v1/time"] >= 1  # it synced, as a fresh process must
        order = e2e.control.get_order(account.api_key, "BTCUSDT", client_order_id=trade.client_order_id)
        assert order["status"] == "CANCELED"
    finally:
        e2e.stack.stop("drifting")
        for name in ("worker1", "worker2"):
            e2e.stack.start_worker(name)
        for name in ("worker1", "worker2"):
            wait_for(
                lambda name=name: e2e.stack.log(name).count("ready.") > readies[name],
                timeout=60,
                message=f"{name} back",
            )
    e2e.settle()


def test_f25_a_partial_fill_opened_from_the_cancel_answer_gets_its_entry_price_later(e2e):
    """Binance's cancel answer has no avgPrice (2026-07): the partial fill it reports opens the trade without a
    price; the verification that follows every cancel reads the order, price included, and fills it in."""
    account = e2e.account()
    trade = open_position(e2e, account, timeout_sec=3)
    e2e.control.pause_events(account.api_key)  # the stream's TRADE event would carry the price first: lose it
    fill(e2e, trade, qty="0.004", price="49990")

    wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="the entry timeout's cancel opened it")
    wait_for(lambda: Trade.objects.get(pk=trade.pk).entry_price is not None, message="the entry price filled in")
    trade.refresh_from_db()
    assert (trade.filled_qty, trade.entry_price) == (Decimal("0.004"), Decimal("49990"))
    opening = TradeEvent.objects.get(trade=trade, to_status="open")
    assert opening.source == "cancel" and opening.payload["avg_price"] is None  # opened from the lean answer
    assert TradeEvent.objects.filter(trade=trade).count() == 1  # the price is bookkeeping: no second event
    e2e.control.resume_events(account.api_key)
    e2e.settle()


@pytest.mark.parametrize("kind", ["408_placed", "408"])
def test_f26_a_408_on_placement_is_an_unknown_outcome_resolved_by_client_order_id(e2e, kind):
    """Binance answers HTTP 408 when its backend timed out: the order may or may not have been made, whatever code the
    body carries (-1007 here). The trade must stay pending — never failed on the spot, never guessed filled — and the
    reconcile decides by client order id: the order that was made is found (and its fill recorded); the one that was
    not is failed "not found" once the grace has passed."""
    account = e2e.account()
    e2e.control.pause_events(account.api_key)  # nothing by push: only the REST look-up by client order id decides
    e2e.control.inject_fault("/fapi/v1/order", kind, method="POST")
    posts = e2e.control.stats()["requests"].get("POST /fapi/v1/order", 0)
    cid = f"e2e-{uuid.uuid4().hex[:20]}"
    tasks.open_position.delay(account.pk, "BTCUSDT", "BUY", "0.010", "50000", timeout_sec=FAR, client_order_id=cid)
    trade = wait_for(lambda: Trade.objects.filter(client_order_id=cid).first(), message=f"{cid} created")
    wait_for(
        lambda: f"trade {trade.pk}: placement outcome unknown" in e2e.stack.log("worker1") + e2e.stack.log("worker2"),
        message="the placement answered with an unknown outcome",
    )
    trade.refresh_from_db()
    assert trade.status == Trade.Status.PENDING, trade.status_reason  # not failed on a 408
    assert e2e.control.stats()["requests"]["POST /fapi/v1/order"] == posts + 1  # and never sent twice

    if kind == "408_placed":
        assert e2e.control.get_order(account.api_key, "BTCUSDT", client_order_id=cid)["status"] == "NEW"
        e2e.control.fill_order(account.api_key, "BTCUSDT", client_order_id=cid)
        e2e.start_beat()
        wait_for(lambda: status_of(trade) == Trade.Status.OPEN, message="the reconcile found the order and its fill")
        trade.refresh_from_db()
        assert trade.filled_qty == Decimal("0.010") and trade.entry_price == Decimal("50000")
    else:
        e2e.start_beat()
        wait_for(lambda: status_of(trade) == Trade.Status.FAILED, message="failed once the not-found grace passed")
        trade.refresh_from_db()
        assert trade.status_reason == "not found on exchange"
        assert not TradeEvent.objects.filter(trade=trade, to_status=Trade.Status.OPEN).exists()
    e2e.control.resume_events(account.api_key)
    e2e.settle()
