"""Sharing the accounts between any number of stream processes, on any hosts: leases in the database, timed by the
database's clock (trades.db.DatabaseNow), never a host's.

- Every process has a StreamProcess row whose expires_at it pushes `lease_sec` ahead every `renew_sec`; the rows not
  expired are the live processes. Sorted by holder id, process i of p gets a share of n // p accounts, one more
  while i < n % p (the shares add up to n, so every account has a place).
- An account is streamed only by the holder of its StreamLease, claimed with a conditional UPDATE (free: no holder,
  or expired) and renewed by the same pass. A process under its share claims free accounts; one over it closes the
  surplus sockets first, then releases the leases for the others to claim. A free account nobody under its share
  took within `stale_sec` may be claimed by a process at its share (never above share + 1): views of the process
  count differ for a moment after a join or a death, and an account must not stay unstreamed meanwhile.
- A process restarted after a crash on the same machine does not wait for its predecessor's leases to expire: a
  holder id names its machine (boot id and pid namespace), so a holder on this machine whose pid is gone is dead for
  certain and its leases and row are expired at once. A pid that exists (reused, or another user's) counts as alive;
  a holder on another machine only ever expires.
- A process that could not renew closes every socket before its leases can expire (the runner's local deadline:
  the start of the last good pass + lease_sec − renew_sec, on its monotonic clock), so a taker never connects while
  the old holder still streams. A killed process's leases and row expire `lease_sec` after its last pass; the others
  claim them at their next pass and the new connection's reconcile fetches whatever the gap missed.

Everything here is blocking (the runner calls it in its thread pool)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import IntegrityError
from django.db.models import DateTimeField, ExpressionWrapper, Q
from django.db.models.expressions import CombinedExpression

from trades.db import DatabaseNow, db_now

from ..models import StreamLease, StreamProcess

# Rows of processes dead for this long are deleted by the living (a record for the admin until then).
FORGET_DEAD_AFTER = timedelta(hours=1)


def machine_id() -> str:
    """This kernel and pid namespace: two processes with the same machine id see each other's pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: never judge another holder by its pid
        return uuid.uuid4().hex[:12]
    return hashlib.sha256(f"{boot_id}/{pid_namespace}".encode()).hexdigest()[:12]


def new_holder() -> str:
    """host:machine:pid:random — unique per process run, readable in the admin and the logs."""
    return f"{socket.gethostname()[:28]}:{machine_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(holder: str, machine: str) -> bool:
    """A holder on this machine whose process is gone (a pid that exists, whoever's, counts as alive)."""
    parts = holder.rsplit(":", 3)
    if len(parts) != 4 or parts[1] != machine or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def expire_dead_neighbours(holder: str) -> list[str]:
    """Expire at once the leases and rows of processes on this machine that are gone (killed, crashed): a restart
    takes their accounts without waiting out their leases. The holders expired."""
    parts = holder.rsplit(":", 3)
    if len(parts) != 4:
        return []
    machine = parts[1]
    others = set(
        StreamProcess.objects.exclude(holder=holder)
        .filter(expires_at__gt=DatabaseNow())
        .values_list("holder", flat=True)
    )
    others |= set(
        StreamLease.objects.exclude(holder__in=["", holder])
        .filter(expires_at__gt=DatabaseNow())
        .values_list("holder", flat=True)
        .distinct()
    )
    dead = [other for other in sorted(others) if _dead_here(other, machine)]
    if dead:
        StreamLease.objects.filter(holder__in=dead).update(expires_at=DatabaseNow())
        StreamProcess.objects.filter(holder__in=dead).delete()
    return dead


def _in(seconds: float) -> ExpressionWrapper[CombinedExpression]:
    """The database's clock `seconds` from now, as an SQL expression."""
    return ExpressionWrapper(DatabaseNow() + timedelta(seconds=seconds), output_field=DateTimeField())


def _ago(seconds: float) -> ExpressionWrapper[CombinedExpression]:
    return ExpressionWrapper(DatabaseNow() - timedelta(seconds=seconds), output_field=DateTimeField())


def _free(stale_sec: float | None = None) -> Q:
    """A lease nobody holds: never claimed, released, or expired (for at least stale_sec when given)."""
    if stale_sec is None:
        return Q(holder="") | Q(expires_at__isnull=True) | Q(expires_at__lt=DatabaseNow())
    return Q(expires_at__isnull=True) | Q(expires_at__lt=_ago(stale_sec))


def share_of(holder: str, live: list[str], accounts: int) -> int:
    """How many of `accounts` the process `holder` should stream among the `live` ones (sorted)."""
    index = live.index(holder)
    return accounts // len(live) + (1 if index < accounts % len(live) else 0)


def heartbeat(holder: str, lease_sec: float) -> list[str]:
    """This process is alive for lease_sec more (on the database's clock); the live processes, sorted, itself
    included (its row reappears if someone deleted it)."""
    if not StreamProcess.objects.filter(holder=holder).update(expires_at=_in(lease_sec)):
        host, pid = holder.rsplit(":", 3)[0], os.getpid()
        StreamProcess.objects.update_or_create(
            holder=holder, defaults={"host": host, "pid": pid, "expires_at": db_now() + timedelta(seconds=lease_sec)}
        )
    StreamProcess.objects.filter(expires_at__lt=_ago(FORGET_DEAD_AFTER.total_seconds())).delete()
    live = set(StreamProcess.objects.filter(expires_at__gt=DatabaseNow()).values_list("holder", flat=True))
    return sorted(live | {holder})


def renew(holder: str, lease_sec: float) -> set[int]:
    """Push every lease this process holds lease_sec ahead; the accounts it holds. A lease another process has taken
    (ours had expired) is no longer ours: its holder changed, and the UPDATE does not touch it."""
    StreamLease.objects.filter(holder=holder).update(expires_at=_in(lease_sec))
    return set(StreamLease.objects.filter(holder=holder).values_list("account_id", flat=True))


def _ensure_rows(account_ids: list[int]) -> None:
    known = set(StreamLease.objects.filter(account_id__in=account_ids).values_list("account_id", flat=True))
    missing = [pk for pk in account_ids if pk not in known]
    if not missing:
        return
    try:
        StreamLease.objects.bulk_create([StreamLease(account_id=pk) for pk in missing], ignore_conflicts=True)
    except IntegrityError:  # an account deleted in between: one by one, skipping it
        for pk in missing:
            try:
                StreamLease.objects.get_or_create(account_id=pk)
            except IntegrityError:
                continue


def claim(
    holder: str, account_ids: list[int], count: int, lease_sec: float, *, stale_sec: float | None = None
) -> list[int]:
    """Claim up to `count` free leases among account_ids (in random order, so processes claiming at once rarely
    collide); the ones this process won."""
    if count <= 0 or not account_ids:
        return []
    _ensure_rows(account_ids)
    free = list(
        StreamLease.objects.filter(_free(stale_sec), account_id__in=account_ids).values_list("account_id", flat=True)
    )
    random.shuffle(free)
    won: list[int] = []
    for pk in free:
        if len(won) >= count:
            break
        if StreamLease.objects.filter(_free(stale_sec), account_id=pk).update(
            holder=holder, expires_at=_in(lease_sec), claimed_at=DatabaseNow()
        ):
            won.append(pk)
    return won


def release(holder: str, account_ids: Iterable[int]) -> int:
    """Let go of these leases (their sockets are closed already): free from now, for another process to claim."""
    return StreamLease.objects.filter(holder=holder, account_id__in=list(account_ids)).update(
        holder="", expires_at=DatabaseNow(), claimed_at=None
    )


def leave(holder: str) -> None:
    """A clean exit: every lease released and the process gone from the live count at once."""
    StreamLease.objects.filter(holder=holder).update(holder="", expires_at=DatabaseNow(), claimed_at=None)
    StreamProcess.objects.filter(holder=holder).delete()


@dataclass
class Plan:
    """One pass: what this process holds now, and which of those it must close and then release."""

    held: set[int]
    share: int
    processes: int
    claimed: list[int] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)  # holders on this machine found gone
    surplus: list[int] = field(default_factory=list)  # close the sockets, then release()


def coordinate(holder: str, wanted: set[int], *, lease_sec: float, stale_sec: float) -> Plan:
    """Heartbeat, renew, then claim up to the share (or mark the surplus). Accounts held but no longer wanted
    (disabled, deleted, not among --account) are surplus too."""
    dead = expire_dead_neighbours(holder)
    live = heartbeat(holder, lease_sec)
    held = renew(holder, lease_sec)
    share = share_of(holder, live, len(wanted))
    surplus = sorted(held - wanted)
    mine = sorted(held & wanted)
    claimed: list[int] = []
    if len(mine) > share:
        surplus += mine[share:]  # the highest pks: any would do
    else:
        free = [pk for pk in wanted if pk not in held]
        claimed = claim(holder, free, share - len(mine), lease_sec)
        if len(mine) + len(claimed) >= share:  # at the share: one more, if nobody under theirs took it in time
            claimed += claim(
                holder,
                [pk for pk in free if pk not in claimed],
                share + 1 - len(mine) - len(claimed),
                lease_sec,
                stale_sec=stale_sec,
            )
    return Plan(
        held=(held | set(claimed)) - set(surplus),
        share=share,
        processes=len(live),
        claimed=claimed,
        surplus=surplus,
        dead=dead,
    )
