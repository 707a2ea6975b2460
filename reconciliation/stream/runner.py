"""Every account's user-data stream in one asyncio loop: which accounts (re-read from the DB every
account_refresh_sec, so accounts added, disabled or re-keyed in the admin are picked up without a restart), one
AccountStream task each, and a bounded shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import messages
from .config import StreamConfig
from .connection import AccountStream
from .state import blocking, fingerprint, load_accounts, load_deaf_marks, record_heartbeat

logger = logging.getLogger("reconciliation.user_stream")


class UserStreamRunner:
    """`await run()` streams until `request_stop()` (thread-safe; the command wires SIGTERM/SIGINT to it).

    enqueue_reconcile(account_id, reason) / enqueue_position_sync(account_id, reason) default to the Celery tasks;
    tests and the benchmark pass callables that do the work in-process."""

    def __init__(self, *, account_names: list[str] | None = None, config: StreamConfig | None = None,
                 enqueue_reconcile: Callable[[int, str], object] | None = None,
                 enqueue_position_sync: Callable[[int, str], object] | None = None) -> None:
        self.account_names = list(account_names or []) or None
        self.config = config or StreamConfig.from_settings()
        self.enqueue_reconcile = enqueue_reconcile or messages.enqueue_reconcile_task
        self.enqueue_position_sync = enqueue_position_sync or messages.enqueue_position_sync_task
        self.streams: dict[int, AccountStream] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._fingerprints: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._executor: ThreadPoolExecutor | None = None
        self.refreshes = 0

    def request_stop(self) -> None:
        """Stop streaming: close every socket (listenKeys are left to lapse), then run() returns. Safe from any thread or a signal."""
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self._executor = ThreadPoolExecutor(max_workers=self.config.threads, thread_name_prefix="user-stream")
        logger.info("user_stream event=start accounts=%s", ",".join(self.account_names) if self.account_names
                    else "all active")
        try:
            while not self._stop.is_set():
                try:
                    await self.refresh()
                except Exception:  # noqa: BLE001 — the DB may be away for a moment; the streams keep running
                    logger.exception("user_stream account_refresh_failed")
                try:
                    await asyncio.wait_for(self._stop.wait(), self.config.account_refresh_sec)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._stop_streams(list(self._tasks), timeout=self.config.shutdown_sec)
            self._executor.shutdown(wait=False, cancel_futures=True)
            logger.info("user_stream event=exit")

    async def refresh(self) -> None:
        """Start, stop or restart streams to match the accounts in the DB."""
        accounts = await blocking(self._executor, load_accounts, self.account_names)
        wanted = {pk: fingerprint(account) for pk, account in accounts.items()}
        gone = [pk for pk in self._tasks if pk not in wanted]
        rekeyed = [pk for pk in self._tasks if pk in wanted and wanted[pk] != self._fingerprints[pk]]
        crashed = [pk for pk, task in self._tasks.items() if task.done() and pk not in gone and pk not in rekeyed]
        for pk in gone:
            logger.info("user_stream event=account_removed account=%s", self.streams[pk].label)
        for pk in rekeyed:
            logger.info("user_stream event=account_changed account=%s", self.streams[pk].label)
        # The old stream closes its socket before the new one connects (Binance hands out the same listenKey).
        await self._stop_streams(gone + rekeyed + crashed, timeout=self.config.shutdown_sec)
        for pk, account in accounts.items():
            if pk not in self._tasks:
                self._start(account, wanted[pk])
        await blocking(self._executor, record_heartbeat, list(self._tasks))
        # A stream marked deaf (REST keeps finding changes its socket never delivered): a fresh connection.
        for pk, marked_at in (await blocking(self._executor, load_deaf_marks, list(self._tasks))).items():
            if pk in self.streams:
                self.streams[pk].reconnect_if_deaf(marked_at)
        self.refreshes += 1

    def _start(self, account, account_fingerprint: str) -> None:
        stream = AccountStream(account, config=self.config, executor=self._executor,
                               enqueue_reconcile=self.enqueue_reconcile,
                               enqueue_position_sync=self.enqueue_position_sync)
        self.streams[account.pk] = stream
        self._fingerprints[account.pk] = account_fingerprint
        self._tasks[account.pk] = asyncio.get_running_loop().create_task(stream.run(), name=f"user-stream-{account.pk}")

    async def _stop_streams(self, pks: list[int], *, timeout: float) -> None:
        tasks = []
        for pk in pks:
            stream, task = self.streams.pop(pk, None), self._tasks.pop(pk, None)
            self._fingerprints.pop(pk, None)
            if stream is not None:
                stream.stop()
            if task is not None:
                tasks.append(task)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            logger.warning("user_stream stop_timeout task=%s: cancelling", task.get_name())
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=0.5)


def run_user_stream(account_names: list[str] | None = None, *, config: StreamConfig | None = None,
                    install_signal_handlers: bool = True) -> int:
    """The process: stream until SIGTERM/SIGINT, then close the sockets (never DELETE a listenKey) and return 0."""
    import signal

    runner = UserStreamRunner(account_names=account_names, config=config)

    async def main():
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, runner.request_stop)
        await runner.run()

    asyncio.run(main())
    return 0
