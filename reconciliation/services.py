"""The services' contract: the names the bot, the tasks, the admin, the commands and scripts import. Each lives in the
room of the domain it belongs to; this module only re-exports them (import from here, not from the rooms).

    apply_order_snapshot, flag_for_operator, fetch_order     orders/apply.py (THE rule: orders/rules.py, snapshots.py)
    reconcile_pending                                        reconcile/pending.py
    prune_reconcile_runs                                     reconcile/runs.py
    sync_positions_with_binance                              positions/sync.py
    cancel_trade_order, verify_after_cancel                  cancels/cancel.py
    cancel_overdue_entries, cancel_entry_at_deadline         cancels/deadlines.py
    create_pending_trade, get_or_create_pending_trade,
    awaits_placement, open_position                          entries/create.py
    place_entry_order                                        entries/place.py
    gateway                                                  gateway.py

Services take model instances, talk to Binance through `BinanceFuturesClient` (from `gateway()`), and never import an
interface (tasks, admin, commands, the bot, the stream's processes).
"""

from .cancels.cancel import cancel_trade_order, verify_after_cancel
from .cancels.deadlines import cancel_entry_at_deadline, cancel_overdue_entries
from .entries.create import awaits_placement, create_pending_trade, get_or_create_pending_trade, open_position
from .entries.place import place_entry_order
from .gateway import gateway
from .orders.apply import apply_order_snapshot, fetch_order, flag_for_operator
from .positions.sync import sync_positions_with_binance
from .reconcile.pending import reconcile_pending
from .reconcile.runs import prune_reconcile_runs

__all__ = [
    "apply_order_snapshot",
    "reconcile_pending",
    "sync_positions_with_binance",
    "verify_after_cancel",
    "cancel_trade_order",
    "flag_for_operator",
    "create_pending_trade",
    "get_or_create_pending_trade",
    "awaits_placement",
    "open_position",
    "place_entry_order",
    "fetch_order",
    "prune_reconcile_runs",
    "gateway",
    "cancel_overdue_entries",
    "cancel_entry_at_deadline",
]
