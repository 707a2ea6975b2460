"""Positions and orphans: open trades against Binance's positions (sync.py, exposure.py), exit fills (exits.py),
orphan exchange positions recovered or dismissed (orphans.py), and the operator's close by hand (operator.py)."""
