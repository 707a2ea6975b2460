"""python manage.py reconcile [--account NAME | --all] [--deep] [--positions]: run the services now, print reports."""

import json
import sys

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
        for index, acct in enumerate(accounts, 1):
            if all and not json and sys.stderr.isatty():
                self.stderr.write(f"\r[{index}/{len(accounts)}] {acct.name}", ending="")
            try:
                if positions:
                    report = services.sync_positions_with_binance(acct, reason="command")
                else:
                    report = services.reconcile_pending(acct, reason="command", deep=deep)
            except Exception as exc:  # noqa: BLE001 — one account's failure never stops the others
                failures += 1
                self.stderr.write(self.style.ERROR(f"{acct.name}: {type(exc).__name__}: {exc}"))
                continue
            self.stdout.write(self._format(acct, report, as_json=json))
        if all and not json and sys.stderr.isatty():
            self.stderr.write("")
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


def json_dumps(data):
    return json.dumps(data, default=str, sort_keys=True)
