"""Fixtures shared by the reconciliation tests."""

import pytest

from reconciliation import tasks


@pytest.fixture
def placements(monkeypatch):
    """Placements enqueued by open_position, held instead of sent; run() runs them in-process, in order."""

    class Held(list):
        def run(self):
            for trade_id, timeout_sec in self:
                tasks.place_entry_order(trade_id, timeout_sec)

    held = Held()
    monkeypatch.setattr(tasks.place_entry_order, "delay", lambda *args: held.append(args))
    monkeypatch.setattr(tasks.entry_timeout, "apply_async", lambda *args, **opts: None)
    return held
