"""Every account's user-data stream in one asyncio loop: which accounts (re-read from the DB every
account_refresh_sec, so accounts added, disabled or re-keyed in the admin are picked up without a restart), one
AccountStream task each, and a bounded shutdown.

Of those accounts, a process streams the ones whose stream lease it holds (shards.py): any number of processes share
the accounts, and one process alone holds them all. New connections are ramped (connects_per_sec)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import messages, shards
from .config import StreamConfig
from .connection import AccountStream
from .state import blocking, fingerprint, load_accounts, load_deaf_marks, record_heartbeat

if TYPE_CHECKING:
    from trades.models import Account

logger = logging.getLogger("reconciliation.user_stream")


class UserStreamRunner:
    """`await run()` streams until `request_stop()` (thread-safe; the command wires SIGTERM/SIGINT to it).

    enqueue_reconcile(account_id, reason) / enqueue_position_sync(account_id, reason) default to the Celery tasks;
    tests and the benchmark pass callables that do the work in-process."""

    def __init__(
        self,
        *,
        account_names: list[str] | None = None,
        config: StreamConfig | None = None,
        enqueue_reconcile: Callable[[int, str], object] | None = None,
        enqueue_position_sync: Callable[[int, str], object] | None = None,
    ) -> None:
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
        self.holder = shards.new_holder()
        self.held: set[int] = set()  # the accounts whose stream lease this process holds
        self.plan: shards.Plan | None = None
        self._accounts: dict[int, Account] | None = None  # None until the first refresh
        self._lease_valid_until = 0.0  # monotonic: past it, no lease of ours is proven live
        self._next_connect = 0.0  # monotonic: the ramp's next free slot

    def request_stop(self) -> None:
        """Stop streaming: close every socket (listenKeys are left to lapse), then run() returns. Safe from any thread or a signal."""
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def _pool(self) -> ThreadPoolExecutor:
        """The executor of run(), the only caller of refresh() and sync() (and so of the streams they start)."""
        assert self._executor is not None, "run() creates the executor before anything uses it"
        return self._executor

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self._executor = ThreadPoolExecutor(max_workers=self.config.threads, thread_name_prefix="user-stream")
        logger.info(
            "user_stream event=start accounts=%s", ",".join(self.account_names) if self.account_names else "all active"
        )
        logger.info(
            "user_stream event=holder holder=%s takeover_s=%g lease_s=%g renew_s=%g",
            self.holder,
            self.config.takeover_sec,
            self.config.lease_sec,
            self.config.renew_sec,
        )
        next_refresh = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.config.account_refresh_sec
                    try:
                        await self.refresh()
                    except Exception:  # noqa: BLE001 — the DB may be away for a moment; the streams keep running
                        logger.exception("user_stream account_refresh_failed")
                elif self._accounts is not None:
                    try:
                        await self.sync()
                    except Exception:  # noqa: BLE001 — as above, until the lease deadline
                        logger.exception("user_stream lease_renew_failed")
                await self._enforce_lease_deadline()
                wait = min(self.config.renew_sec, max(0.0, next_refresh - time.monotonic()))
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            await self._stop_streams(list(self._tasks), timeout=self.config.shutdown_sec)
            try:  # the others take over at once instead of after the leases expire
                await asyncio.wait_for(blocking(self._executor, shards.leave, self.holder), self.config.shutdown_sec)
            except Exception:  # noqa: BLE001 — then the leases simply expire
                logger.warning(
                    "user_stream leave_failed holder=%s: the leases expire within %gs",
                    self.holder,
                    self.config.lease_sec,
                )
            self._executor.shutdown(wait=False, cancel_futures=True)
            logger.info("user_stream event=exit")

    async def refresh(self) -> None:
        """Re-read the accounts, then sync(); record the heartbeat and act on deaf marks."""
        self._accounts = await blocking(self._pool, load_accounts, self.account_names)
        await self.sync()
        await blocking(self._pool, record_heartbeat, list(self._tasks))
        # A stream marked deaf (REST keeps finding changes its socket never delivered): a fresh connection.
        for pk, marked_at in (await blocking(self._pool, load_deaf_marks, list(self._tasks))).items():
            if pk in self.streams:
                self.streams[pk].reconnect_if_deaf(marked_at)
        self.refreshes += 1

    async def sync(self) -> None:
        """One lease pass (shards.coordinate), then start, stop or restart streams to match the accounts whose
        lease this process holds. A socket whose lease is lost or surplus is closed before anything else."""
        assert self._accounts is not None, "run() syncs only once a refresh has loaded the accounts"
        started = time.monotonic()
        timeout = self.config.lease_sec if not self._tasks else max(0.1, self._lease_valid_until - started)
        plan = await asyncio.wait_for(
            blocking(
                self._pool,
                shards.coordinate,
                self.holder,
                set(self._accounts),
                lease_sec=self.config.lease_sec,
                stale_sec=self.config.stale_sec,
            ),
            timeout,
        )
        self._lease_valid_until = started + self.config.lease_sec - self.config.renew_sec
        lost = [pk for pk in self._tasks if pk not in plan.held and pk not in plan.surplus]
        for pk in lost:
            logger.warning(
                "user_stream event=lease_lost account=%s holder=%s: closing the socket",
                self.streams[pk].label,
                self.holder,
            )
        surplus = [pk for pk in plan.surplus if pk in self._tasks]
        for pk in surplus:
            logger.info(
                "user_stream event=lease_released account=%s share=%d processes=%d",
                self.streams[pk].label,
                plan.share,
                plan.processes,
            )
        await self._stop_streams(lost + surplus, timeout=self.config.shutdown_sec)
        if plan.surplus:
            await blocking(self._pool, shards.release, self.holder, plan.surplus)
        for dead in plan.dead:
            logger.warning(
                "user_stream event=holder_dead holder=%s: a process on this machine that is gone; its "
                "leases expired now",
                dead,
            )
        if plan.claimed:
            logger.info(
                "user_stream event=leases_claimed accounts=%s share=%d processes=%d",
                ",".join(map(str, plan.claimed)),
                plan.share,
                plan.processes,
            )
        self.plan, self.held = plan, set(plan.held)
        await self._sync_streams({pk: a for pk, a in self._accounts.items() if pk in plan.held})

    async def _enforce_lease_deadline(self) -> None:
        """Never stream without a live lease: once the last good pass is too old for the leases to be trusted (the
        database away, a pass hung), close every socket; the next good pass starts them again."""
        if self._tasks and time.monotonic() > self._lease_valid_until:
            logger.error(
                "user_stream event=leases_unconfirmed holder=%s: no lease renewed for %gs; closing %d "
                "sockets before another process may take them",
                self.holder,
                self.config.lease_sec - self.config.renew_sec,
                len(self._tasks),
            )
            self.held = set()
            await self._stop_streams(list(self._tasks), timeout=self.config.shutdown_sec)

    async def _sync_streams(self, accounts: dict) -> None:
        """Start, stop or restart streams to match `accounts`."""
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

    def _start(self, account: Account, account_fingerprint: str) -> None:
        stream = AccountStream(
            account,
            config=self.config,
            executor=self._pool,
            enqueue_reconcile=self.enqueue_reconcile,
            enqueue_position_sync=self.enqueue_position_sync,
        )
        self.streams[account.pk] = stream
        self._fingerprints[account.pk] = account_fingerprint
        self._tasks[account.pk] = asyncio.get_running_loop().create_task(
            self._ramped(stream, self._connect_delay()), name=f"user-stream-{account.pk}"
        )

    def _connect_delay(self) -> float:
        """Seconds until the next free connect slot (at most connects_per_sec new streams start per second)."""
        if self.config.connects_per_sec <= 0:
            return 0.0
        now = time.monotonic()
        slot = max(now, self._next_connect)
        self._next_connect = slot + 1.0 / self.config.connects_per_sec
        return slot - now

    @staticmethod
    async def _ramped(stream: AccountStream, delay: float) -> None:
        if delay > 0:
            await stream._sleep(delay)  # ends early when the stream is stopped
        if not stream._stopping:
            await stream.run()

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


def run_user_stream(
    account_names: list[str] | None = None, *, config: StreamConfig | None = None, install_signal_handlers: bool = True
) -> int:
    """The process: stream until SIGTERM/SIGINT, then close the sockets (never DELETE a listenKey) and return 0."""
    import signal

    runner = UserStreamRunner(account_names=account_names, config=config)

    async def main() -> None:
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, runner.request_stop)
        await runner.run()

    asyncio.run(main())
    return 0
