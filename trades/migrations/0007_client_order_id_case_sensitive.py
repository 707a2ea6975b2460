"""Trade.client_order_id compares case-sensitively on MySQL/MariaDB (utf8mb4_bin), as Binance does: with the
default utf8mb4_unicode_ci, `abc-1` and `ABC-1` were one id to the unique constraint and to every look-up, so the
second order was never placed. On SQLite (already case-sensitive) this only rebuilds the table, unchanged."""

import django.core.validators
import trades.fields
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("trades", "0006_trade_cancel_after"),
    ]

    operations = [
        migrations.AlterField(
            model_name="trade",
            name="client_order_id",
            field=trades.fields.CaseSensitiveCharField(
                blank=True,
                max_length=36,
                null=True,
                validators=[
                    django.core.validators.RegexValidator(
                        "^[\\.A-Z\\:/a-z0-9_-]{1,36}$",
                        "Binance allows 1-36 characters of letters, digits and . : / _ -",
                    )
                ],
            ),
        ),
    ]
