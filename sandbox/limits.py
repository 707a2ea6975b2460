"""Request weight (429/418 with Retry-After), injected faults and request statistics.

Binance counts weight per IP; the sandbox counts it per API key (requests without a key count under
"ip:<address>") so that tests sharing one loopback address stay isolated from each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MINUTE_MS = 60_000
STRIKES_BEFORE_BAN = 3      # over-limit requests answered 429 in one minute; the next ones get 418
BAN_MS = 2 * MINUTE_MS      # Binance's shortest IP ban
FAULT_KINDS = frozenset({"408", "408_placed", "500", "502", "503", "503_unknown_placed", "429", "418", "hang"})


@dataclass(slots=True)
class _Window:
    minute: int = -1
    used: int = 0
    strikes: int = 0
    banned_until: int = 0


class WeightLimiter:
    def __init__(self, limit: int) -> None:
        self.default_limit = limit
        self.limit = limit
        self.windows: dict[str, _Window] = {}

    def reset(self) -> None:
        self.limit = self.default_limit
        self.windows.clear()

    def charge(self, who: str, weight: int, now: int) -> tuple[int, int, int]:
        """Count `weight` for `who`; return (used weight this minute, HTTP status to answer or 0, Retry-After s)."""
        w = self.windows.get(who)
        if w is None:
            w = self.windows[who] = _Window()
        minute = now // MINUTE_MS
        if w.minute != minute:
            w.minute, w.used, w.strikes = minute, 0, 0
        w.used += weight
        if w.banned_until > now:
            return w.used, 418, math.ceil((w.banned_until - now) / 1000)
        if w.used <= self.limit:
            return w.used, 0, 0
        w.strikes += 1
        if w.strikes > STRIKES_BEFORE_BAN:
            w.banned_until = now + BAN_MS
            return w.used, 418, BAN_MS // 1000
        return w.used, 429, math.ceil((MINUTE_MS - now % MINUTE_MS) / 1000)

    def used(self, who: str, now: int) -> int:
        w = self.windows.get(who)
        return w.used if w is not None and w.minute == now // MINUTE_MS else 0


@dataclass
class Fault:
    path: str
    kind: str
    count: int
    method: str | None = None
    hang_sec: float | None = None
    retry_after: int | None = None  # 429/418: the Retry-After to send instead of the realistic one

    def public(self) -> dict:
        return {"path": self.path, "kind": self.kind, "count": self.count, "method": self.method,
                "hang_sec": self.hang_sec, "retry_after": self.retry_after}


class Faults:
    def __init__(self) -> None:
        self.rules: list[Fault] = []

    def add(self, path: str, kind: str, count: int = 1, method: str | None = None,
            hang_sec: float | None = None, retry_after: int | None = None) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if kind == "hang" and not hang_sec:
            raise ValueError("fault kind 'hang' needs hang_sec")
        fault = Fault(path, kind, int(count), method.upper() if method else None, hang_sec,
                      None if retry_after is None else int(retry_after))
        self.rules.append(fault)
        return fault

    def take(self, path: str, method: str) -> Fault | None:
        """The first armed fault for this request, consuming one of its count."""
        for fault in self.rules:
            if fault.path == path and (fault.method is None or fault.method == method):
                fault.count -= 1
                if fault.count <= 0:
                    self.rules.remove(fault)
                return fault
        return None


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)   # "GET /fapi/v1/order" -> count
    weight: dict[str, int] = field(default_factory=dict)     # same key -> weight charged
    statuses: dict[str, int] = field(default_factory=dict)   # "200" -> count

    def record(self, endpoint: str, weight: int, status: int) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        self.weight[endpoint] = self.weight.get(endpoint, 0) + weight
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def reset(self) -> None:
        self.requests.clear()
        self.weight.clear()
        self.statuses.clear()

    def public(self) -> dict:
        return {"requests": dict(self.requests), "weight": dict(self.weight), "statuses": dict(self.statuses),
                "total_requests": sum(self.requests.values()), "total_weight": sum(self.weight.values())}
