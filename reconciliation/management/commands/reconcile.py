"""python manage.py reconcile [--account NAME | --all] [--deep] [--positions]: run the services now, print reports.

With --all on a terminal, a progress line (accounts done / total, weight spent, corrections so far) is redrawn as it
goes; when stdout is not a terminal (a pipe, cron, a log file) only the reports are printed.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from reconciliation import services
from trades.models import Account


class Command(BaseCommand):
    help = "Reconcile pending trades against Binance now (synchronously) and print the report."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--account", action="append", metavar="NAME", help="an account name (repeatable)")
        target.add_argument("--all", action="store_true", help="every active account")
        parser.add_argument("--deep", action="store_true", help="pending trades older than RECONCILE_MAX_AGE_SEC")
        parser.add_argument("--positions", action="store_true", help="also sync positions (closes, orphans)")
        parser.add_argument("--json", action="store_true", help="print one JSON report per line")

    def handle(self, *args, account=None, all=False, deep=False, positions=False, json=False, **options):
        if all:
            accounts = list(Account.objects.filter(is_active=True))
        else:
            accounts = list(Account.objects.filter(name__in=account))
            missing = set(account) - {a.name for a in accounts}
            if missing:
                raise CommandError(f"no such account: {', '.join(sorted(missing))}")
        failures = 0
        progress = Progress(self.stdout, len(accounts)) if all and not json and self.stdout.isatty() else None
        for acct in accounts:
            if progress:
                progress.show(acct.name)
            try:
                if positions:
                    report = services.sync_positions_with_binance(acct, reason="command")
                else:
                    report = services.reconcile_pending(acct, reason="command", deep=deep)
            except Exception as exc:  # noqa: BLE001 — one account's failure never stops the others
                failures += 1
                if progress:
                    progress.clear()
                    progress.done += 1
                self.stderr.write(self.style.ERROR(f"{acct.name}: {type(exc).__name__}: {exc}"))
                continue
            if progress:
                progress.clear()
                progress.add(report)
            self.stdout.write(self._format(acct, report, as_json=json))
        if progress:
            progress.finish()
        if failures:
            raise CommandError(f"{failures} account(s) failed")

    @staticmethod
    def _format(account, report, *, as_json):
        if as_json:
            return json_dumps({"account": account.name, **report})
        keys = [
            "outcome",
            "checked",
            "opened",
            "progress",
            "cancelled",
            "failed",
            "corrected",
            "unchanged",
            "resting",
            "not_found_in_grace",
            "needs_operator",
            "errors",
            "weight_used",
            "http_calls",
            "duration_ms",
        ]
        always = {"checked", "weight_used"}
        parts = [f"{key}={report[key]}" for key in keys if report.get(key) not in (0, None) or key in always]
        parts += [f"{key}={value}" for key, value in report.get("extra", {}).items()]
        return f"{account.name}: " + " ".join(parts)


class Progress:
    """The terminal's progress line: redrawn in place (carriage return, erase line), cleared before each report."""

    def __init__(self, out, total: int) -> None:
        self.out, self.total = out, total
        self.done = self.weight = self.corrections = 0

    def _line(self, current: str = "") -> str:
        line = f"[{self.done}/{self.total} accounts] weight {self.weight}, corrections {self.corrections}"
        return f"{line} — {current}…" if current else line

    def show(self, current: str) -> None:
        self.out.write("\r\x1b[K" + self._line(current), ending="")
        self.out.flush()

    def clear(self) -> None:
        self.out.write("\r\x1b[K", ending="")

    def add(self, report: dict) -> None:
        self.done += 1
        self.weight += int(report.get("weight_used") or 0)
        self.corrections += int(report.get("corrected") or 0)

    def finish(self) -> None:
        self.out.write(self._line())


def json_dumps(data):
    return json.dumps(data, default=str, sort_keys=True)
