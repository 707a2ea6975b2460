"""kombu's Redis transport, with channels that keep the connection they were opened on.

Why: Celery 5.7's consumer, on a lost broker connection (Redis restarted), calls `connection.collect()` and then
`connection.close()` (celery/worker/consumer/consumer.py, `on_connection_error_after_connected`). With kombu 5.7:

1. collect() closes the default channel. Redis `Channel.close()` first drains the BRPOP it has in flight; on the dead
   socket that raises ConnectionError before the channel is marked closed. kombu ignores connection errors while
   closing (`Connection.maybe_close_channel`), so the channel is left half closed, still holding the unacknowledged
   messages of the worker (every countdown/ETA task it holds in memory, and acks_late tasks running).
2. collect() then detaches the transport from its connection (`Connection._do_close_transport`:
   `transport.client = None`).
3. close() closes the same channel again. This time it gets to the virtual channel's restore of unacknowledged
   messages (`QoS.restore_unacked_once`), which opens a new Redis client from `self.connection.client` — now None:
   `AttributeError: 'NoneType' object has no attribute 'hostname'` in `Channel._connparams`. That is not a connection
   error, so nothing ignores it and the worker exits ("Unrecoverable error"). Without unacknowledged messages the
   restore returns early, which is why only workers holding a countdown died.

No released celery/kombu changes this (celery 5.7.0 and kombu 5.7.0 are the latest). Here a channel remembers the
kombu Connection it was opened on and reads its parameters from it when the transport has been detached, so the
second close behaves like any close on a broker that is down or back: the restore either succeeds (Redis is back and
kept its data: the messages are queued again) or fails with a connection error, which kombu ignores while closing —
the messages then stay in Redis' `unacked` hash and any worker hands them out again after the visibility timeout.
Nothing is swallowed here: errors keep their kind and reach the handlers kombu and Celery have for them.
"""

from kombu.transport import redis


class Channel(redis.Channel):
    def __init__(self, connection, *args, **kwargs):
        self._opened_on = connection.client  # the kombu Connection: still valid after collect() detaches it
        super().__init__(connection, *args, **kwargs)

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:  # detached by Connection.collect() while this channel was half closed
            self.connection.client = self._opened_on
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]  # kombu's, not in celery-types' stub


class Transport(redis.Transport):
    Channel = Channel
