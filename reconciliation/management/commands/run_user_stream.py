"""python manage.py run_user_stream [--account NAME …]: the user-data WebSocket consumer (reconciliation.user_stream).

Runs until SIGTERM/SIGINT, then closes its sockets (listenKeys are left to lapse, never DELETEd) and exits 0.
"""

from django.core.management.base import BaseCommand, CommandError

from reconciliation.user_stream import run_user_stream
from trades.models import Account


class Command(BaseCommand):
    help = "Stream Binance user-data events for every active account (or the named ones) into the trades."

    def add_arguments(self, parser):
        parser.add_argument(
            "--account",
            action="extend",
            nargs="+",
            metavar="NAME",
            dest="accounts",
            help="stream only these accounts (repeatable); default: every active account",
        )

    def handle(self, *args, accounts=None, **options):
        if accounts:
            known = set(Account.objects.filter(name__in=accounts).values_list("name", flat=True))
            missing = sorted(set(accounts) - known)
            if missing:
                raise CommandError(f"no such account: {', '.join(missing)}")
        run_user_stream(accounts)
