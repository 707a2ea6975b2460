"""Order state: what Binance says about an order (snapshots.py), the one rule that decides what it means for a trade
(rules.py), applying it with one compare-and-set (apply.py), the not-found re-checks (rechecks.py) and the operator's
actions on an order (operator.py)."""
