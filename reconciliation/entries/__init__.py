"""Entries: the bot's pending trade (create.py), its one placement (place.py) and the account's position mode that
the order's positionSide follows (position_mode.py)."""
