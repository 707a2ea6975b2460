"""The user-data stream consumer, in parts; `reconciliation.user_stream` is its public face.

config.py      StreamConfig (intervals from settings) and the reconnect backoff
messages.py    one message → what it means (`classify`) → applied through the one rule (`handle_message`)
state.py       the blocking side: DB work wrapped for threads, account loading, AccountSyncState writes
connection.py  AccountStream: one account's listenKey + WebSocket life cycle
runner.py      UserStreamRunner: every account's stream in one event loop, account refresh, shutdown
"""
