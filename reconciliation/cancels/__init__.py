"""Cancels: cancel an entry's order, then always verify it (cancel.py); entry deadlines and their sweep
(deadlines.py)."""
