"""A local exchange that speaks Binance's USDⓈ-M Futures protocol (REST + user-data WebSocket).

Standalone on purpose: nothing here imports Django or any part of the project. See README.md.
"""
