"""Admin columns and read-only fields that read like money (desk/format.py), for the ModelAdmins of trades and
reconciliation. Each is a callable named like the field it shows, so the admin's CSS classes (`field-status`,
`column-quantity`) and sorting stay those of the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .format import EMPTY, badge, event_facts, exchange_time, local_time, money

Column = Callable[[Any], Any]
# What the admin's field lists (list_display, readonly_fields, fields) hold: names and callables. Django accepts both;
# django-stubs types these lists as names only, hence Any where they are built here.
FieldList = list[Any]

# Binance epoch-millisecond fields of our models.
EXCHANGE_MS_FIELDS = {"exchange_update_time"}


def _named(fn: Column, name: str, description: str, ordering: str | None) -> Column:
    fn.__name__ = fn.__qualname__ = name
    return admin.display(description=description, ordering=ordering)(fn)


def money_column(field: str, description: str | None = None) -> Column:
    def column(obj: Any) -> str:
        return money(getattr(obj, field))

    return _named(column, field, description or field.replace("_", " "), field)


def exchange_time_column(field: str, description: str | None = None) -> Column:
    def column(obj: Any) -> SafeString | str:
        return exchange_time(getattr(obj, field))

    return _named(column, field, description or field.replace("_", " "), field)


def local_time_column(field: str, description: str | None = None) -> Column:
    def column(obj: Any) -> SafeString:
        moment = getattr(obj, field)
        return format_html('<time datetime="{}">{}</time>', moment.isoformat() if moment else "", local_time(moment))

    return _named(column, field, description or field.replace("_", " "), field)


def badge_column(field: str = "status", description: str | None = None, kinds: dict[str, str] | None = None) -> Column:
    """`kinds` recolours states of this model (an orphan's "open" is bad news, a trade's is not)."""

    def column(obj: Any) -> SafeString:
        value = getattr(obj, field)
        return badge(value, kind=(kinds or {}).get(value))

    return _named(column, field, description or field.replace("_", " "), field)


def readable_readonly_fields(model: type[models.Model], *extra: Column) -> FieldList:
    """Every field of `model`, read-only, in model order: decimals as money, Binance ms as exchange times, the
    status as a badge, then `extra`. Pair with `exclude = replaced_field_names(model)` so the form does not render
    them again."""
    fields: FieldList = []
    for field in model._meta.fields:
        label = str(field.verbose_name)
        if isinstance(field, models.DecimalField):
            fields.append(money_column(field.name, label))
        elif field.name in EXCHANGE_MS_FIELDS:
            fields.append(exchange_time_column(field.name, label))
        elif field.name == "status":
            fields.append(badge_column(field.name, label))
        elif isinstance(field, models.DateTimeField):
            fields.append(local_time_column(field.name, label))
        else:
            fields.append(field.name)
    return [*fields, *extra]


def replaced_field_names(model: type[models.Model]) -> list[str]:
    """The fields `readable_readonly_fields` shows through a callable: excluded from the admin's form."""
    return [
        field.name
        for field in model._meta.fields
        if isinstance(field, models.DecimalField | models.DateTimeField)
        or field.name in EXCHANGE_MS_FIELDS
        or field.name == "status"
    ]


# --- The audit trail ------------------------------------------------------------------------------------------------


@admin.display(description="change")
def event_change(event: Any) -> SafeString:
    """from → to, as badges ("created" when there was no state before)."""
    before = badge(event.from_status) if event.from_status else format_html("<em>{}</em>", "created")
    after = badge(event.to_status) if event.to_status else EMPTY
    return format_html('<span class="desk-change">{} → {}</span>', before, after)


@admin.display(description="Binance facts and reason")
def event_facts_table(event: Any) -> SafeString:
    """The payload as a small two-column list (status, orderId, executedQty, avgPrice, updateTime, then reasons), the raw JSON
    folded under it."""
    rows = event_facts(event.payload)
    # Spans, not a table: the admin wraps a read-only value in <p>, where only phrasing content is valid.
    table = (
        format_html(
            '<span class="desk-facts">{}</span>',
            format_html_join("", '<span class="desk-fact-label">{}</span><span class="desk-fact">{}</span>', rows),
        )
        if rows
        else EMPTY
    )
    raw = json.dumps(event.payload, cls=DjangoJSONEncoder, indent=1, sort_keys=True)
    return format_html('{}<details class="desk-raw"><summary>raw JSON</summary><pre>{}</pre></details>', table, raw)


event_created_at = local_time_column("created_at", "when")
event_filled_qty = money_column("filled_qty", "filled qty")

# The audit trail as readable rows: when, source, from → to, actor and Binance's facts (raw JSON folded under them).
AUDIT_INLINE_FIELDS: FieldList = [
    event_created_at,
    "source",
    event_change,
    event_filled_qty,
    "actor",
    event_facts_table,
]
AUDIT_LIST_COLUMNS: FieldList = [
    "created_at",
    "trade",
    "source",
    event_change,
    event_filled_qty,
    "actor",
    event_facts_table,
]


def exposure_link(account: Any) -> SafeString:
    """The account's exposure page (desk/views.py), for the Account list and change page."""
    return format_html('<a href="{}">exposure</a>', reverse("desk:exposure", args=[account.pk]))
