"""Request weight per IP and order counts per account (429/418 with Retry-After), injected faults, statistics.

Sourced from Binance's USDⓈ-M Futures "General Info" → "LIMITS" (and the spot "LIMITS" page it mirrors):

* IP limits: every request carries the weight of its route, counted per source IP in 1-minute intervals that
  start on the minute (a request at 00:01:23.456 counts towards 00:01:00's); every answer carries
  X-MBX-USED-WEIGHT-1M, the IP's used weight. The limits are the IP's, not the API key's: every account behind one
  address shares them. Over the limit → 429 with a Retry-After (seconds until the back-off ends). Failing to back
  off after a 429 → an automated IP ban, 418 with a Retry-After until the ban ends; bans "scale in duration for
  repeat offenders, from 2 minutes to 3 days".
* Order rate limits: counted against each account (the X-MBX-ORDER-COUNT-* headers carry the account's count),
  ORDERS 1200/minute and 300/10 s as published in exchangeInfo.rateLimits; over them → 429 with -1015.

Binance does not publish its escalation ladder: here each ban of an IP doubles the previous one, 2 min, 4 min, …,
capped at 3 days. `ban_time_scale` (control API) shrinks every ban for tests; the default, 1.0, is Binance's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MINUTE_MS = 60_000
STRIKES_BEFORE_BAN = 3  # over-limit requests answered 429 in one minute; the next ones get 418
BAN_MS = 2 * MINUTE_MS  # Binance's shortest IP ban
MAX_BAN_MS = 3 * 24 * 3600 * 1000  # and its longest
ORDER_LIMITS = ((10_000, 300, "10S"), (MINUTE_MS, 1200, "1M"))  # (interval ms, limit, header suffix)
FAULT_KINDS = frozenset({"408", "408_placed", "500", "502", "503", "503_unknown_placed", "429", "418", "hang"})


def ban_ms(offence: int, scale: float = 1.0) -> int:
    """How long the `offence`-th ban of an IP lasts (1 → 2 min, doubling, at most 3 days), times `scale`."""
    return max(1, int(min(BAN_MS * 2 ** (offence - 1), MAX_BAN_MS) * scale))


@dataclass(slots=True)
class _Window:
    minute: int = -1
    used: int = 0
    strikes: int = 0
    banned_until: int = 0
    bans: int = 0  # how many times this IP was banned: the next ban lasts longer


class WeightLimiter:
    """REQUEST_WEIGHT per source IP. `limit` applies to every IP unless `ip_limits` names one."""

    def __init__(self, limit: int) -> None:
        self.default_limit = limit
        self.limit = limit
        self.ip_limits: dict[str, int] = {}
        self.ban_time_scale = 1.0
        self.windows: dict[str, _Window] = {}
        # Benchmarks: each IP's used weight of each past minute (by minute number), and its 429/418 answers.
        self.history: dict[str, dict[int, int]] = {}
        self.refused: dict[str, dict[str, int]] = {}

    def reset(self) -> None:
        self.limit = self.default_limit
        self.ip_limits.clear()
        self.ban_time_scale = 1.0
        self.windows.clear()
        self.history.clear()
        self.refused.clear()

    def limit_for(self, ip: str) -> int:
        return self.ip_limits.get(ip, self.limit)

    def charge(self, ip: str, weight: int, now: int) -> tuple[int, int, int]:
        """Count `weight` for `ip`; return (used weight this minute, HTTP status to answer or 0, Retry-After s)."""
        w = self.windows.get(ip)
        if w is None:
            w = self.windows[ip] = _Window()
        minute = now // MINUTE_MS
        if w.minute != minute:
            w.minute, w.used, w.strikes = minute, 0, 0
        w.used += weight
        self.history.setdefault(ip, {})[minute] = w.used
        if w.banned_until > now:
            return self._refuse(ip, w.used, 418, math.ceil((w.banned_until - now) / 1000))
        if weight == 0 or w.used <= self.limit_for(ip):
            return w.used, 0, 0
        w.strikes += 1
        if w.strikes > STRIKES_BEFORE_BAN:
            w.bans += 1
            w.strikes = 0
            length = ban_ms(w.bans, self.ban_time_scale)
            w.banned_until = now + length
            return self._refuse(ip, w.used, 418, math.ceil(length / 1000))
        return self._refuse(ip, w.used, 429, math.ceil((MINUTE_MS - now % MINUTE_MS) / 1000))

    def _refuse(self, ip: str, used: int, status: int, retry_after: int) -> tuple[int, int, int]:
        counts = self.refused.setdefault(ip, {})
        counts[str(status)] = counts.get(str(status), 0) + 1
        return used, status, retry_after

    def used(self, ip: str, now: int) -> int:
        w = self.windows.get(ip)
        return w.used if w is not None and w.minute == now // MINUTE_MS else 0

    def bans(self) -> dict[str, dict]:
        return {ip: {"bans": w.bans, "banned_until": w.banned_until} for ip, w in self.windows.items() if w.bans}


class OrderLimiter:
    """ORDERS per account (API key), in fixed windows like the weight's."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], tuple[int, int]] = {}  # (api key, suffix) -> (window number, count)

    def reset(self) -> None:
        self.counts.clear()

    def count(self, api_key: str, now: int) -> tuple[dict[str, str], tuple[int, int, str] | None]:
        """Count one order; return the X-MBX-ORDER-COUNT-* headers and, when over a limit,
        (limit, interval ms, interval name)."""
        headers, over = {}, None
        for interval, limit, suffix in ORDER_LIMITS:
            window = now // interval
            seen, n = self.counts.get((api_key, suffix), (window, 0))
            n = n + 1 if seen == window else 1
            self.counts[(api_key, suffix)] = (window, n)
            headers[f"X-MBX-ORDER-COUNT-{suffix}"] = str(n)
            if n > limit and over is None:
                over = (limit, interval, "10 SECOND" if suffix == "10S" else "1 MINUTE")
        return headers, over


@dataclass
class Fault:
    path: str
    kind: str
    count: int
    method: str | None = None
    hang_sec: float | None = None
    retry_after: int | None = None  # 429/418: the Retry-After to send instead of the realistic one

    def public(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind,
            "count": self.count,
            "method": self.method,
            "hang_sec": self.hang_sec,
            "retry_after": self.retry_after,
        }


class Faults:
    def __init__(self) -> None:
        self.rules: list[Fault] = []

    def add(
        self,
        path: str,
        kind: str,
        count: int = 1,
        method: str | None = None,
        hang_sec: float | None = None,
        retry_after: int | None = None,
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if kind == "hang" and not hang_sec:
            raise ValueError("fault kind 'hang' needs hang_sec")
        fault = Fault(
            path,
            kind,
            int(count),
            method.upper() if method else None,
            hang_sec,
            None if retry_after is None else int(retry_after),
        )
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
    requests: dict[str, int] = field(default_factory=dict)  # "GET /fapi/v1/order" -> count
    weight: dict[str, int] = field(default_factory=dict)  # same key -> weight charged
    statuses: dict[str, int] = field(default_factory=dict)  # "200" -> count
    # X-MBX-APIKEY -> {"200": count}: tests sharing the session's sandbox count their own account's traffic only
    by_api_key: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, endpoint: str, weight: int, status: int, api_key: str = "") -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        if api_key:
            mine = self.by_api_key.setdefault(api_key, {})
            mine[str(status)] = mine.get(str(status), 0) + 1
        self.weight[endpoint] = self.weight.get(endpoint, 0) + weight
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def reset(self) -> None:
        self.requests.clear()
        self.weight.clear()
        self.statuses.clear()
        self.by_api_key.clear()

    def public(self) -> dict:
        return {
            "requests": dict(self.requests),
            "weight": dict(self.weight),
            "statuses": dict(self.statuses),
            "requests_by_api_key": {key: sum(counts.values()) for key, counts in self.by_api_key.items()},
            "statuses_by_api_key": {key: dict(counts) for key, counts in self.by_api_key.items()},
            "total_requests": sum(self.requests.values()),
            "total_weight": sum(self.weight.values()),
        }
