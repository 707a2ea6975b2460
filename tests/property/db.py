"""Rows per hypothesis example.

pytest-django's `db` wraps the whole test (every example) in one transaction; each example runs inside its own
savepoint that is rolled back at the end, so examples never see each other's rows and nothing is left behind.
The threaded variant (MariaDB) cannot use that — its threads must see committed rows — and deletes its rows.
"""

from contextlib import contextmanager

from django.db import transaction

from trades.models import Account, Trade, TradeEvent


@contextmanager
def rolled_back():
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def delete_accounts(*accounts: Account) -> None:
    """Remove what an example created (the FKs protect, so events, then trades, then accounts)."""
    ids = [account.pk for account in accounts]
    TradeEvent.objects.filter(trade__account_id__in=ids).delete()
    Trade.objects.filter(account_id__in=ids).delete()
    Account.objects.filter(pk__in=ids).delete()


def row(trade: Trade) -> dict:
    """Every stored field of the trade, as the database has it now (updated_at left out: touched by bookkeeping)."""
    values = Trade.objects.filter(pk=trade.pk).values().get()
    values.pop("updated_at")
    return values
