"""The operators' desk, reconciliation side: the reports of every reconcile run (read-only) and the exchange
positions no trade explains (orphans), with "Recover as trade" and "Dismiss". Actions call services and need
`trades.fix_trade`; see trades/admin.py for accounts and trades."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from desk import display
from trades.admin_base import FixPermissionMixin, ReadOnlyAdmin, actor_of
from trades.models import TradeEvent

from .models import AccountSyncState, OrphanPosition, ReconcileRun
from .orders.results import CHANGES
from .positions.orphans import dismiss_orphan, recover_orphan


@admin.register(ReconcileRun)
class ReconcileRunAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "account", "kind", "reason", "outcome", "duration_ms", "checked", "changed", "weight"]
    list_filter = ["outcome", "reason", "kind", "account"]
    list_select_related = ["account"]
    date_hierarchy = "started_at"

    @admin.display(description="checked")
    def checked(self, obj):
        return obj.report.get("checked", 0)

    @admin.display(description="changed")
    def changed(self, obj):
        report = obj.report
        changed = {key.value: report[key] for key in CHANGES if report.get(key)}
        changed |= {key: value for key, value in (report.get("extra") or {}).items() if value}
        return ", ".join(f"{key} {value}" for key, value in changed.items()) or "—"

    @admin.display(description="weight")
    def weight(self, obj):
        return obj.report.get("weight_used", 0)


@admin.register(AccountSyncState)
class AccountSyncStateAdmin(ReadOnlyAdmin):
    list_display = [
        "account",
        "last_reconcile_at",
        "last_position_sync_at",
        "used_weight",
        "stream_state",
        "stream_state_at",
        "stream_last_event_at",
        "lease_until",
    ]
    list_select_related = ["account"]


class DismissForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=200,
        help_text="Why this position needs no trade (for the record).",
    )


@admin.register(OrphanPosition)
class OrphanPositionAdmin(FixPermissionMixin, ReadOnlyAdmin):
    list_display = [
        "account",
        "symbol",
        "position_side",
        display.money_column("quantity", "unexplained"),
        display.money_column("exchange_position", "exchange position"),
        display.money_column("entry_price", "entry price"),
        display.badge_column("status", kinds={OrphanPosition.Status.OPEN: "bad"}),
        display.local_time_column("first_seen_at", "first seen"),
        display.local_time_column("last_seen_at", "last seen"),
        "trade",
        "note",
    ]
    list_filter = ["status", "account", "symbol", "position_side"]
    list_select_related = ["account", "trade"]
    actions = ["recover_as_trade", "dismiss"]

    @admin.action(description="Recover as trade (an open trade for the unexplained quantity)", permissions=["fix"])
    def recover_as_trade(self, request, queryset):
        for orphan in queryset:
            try:
                trade = recover_orphan(orphan, source=TradeEvent.Source.ADMIN, actor=actor_of(request))
            except ValueError as exc:
                self.message_user(request, f"{orphan}: not recovered: {exc}", messages.ERROR)
                continue
            self.log_change(request, orphan, f"recovered as trade {trade.pk}")
            self.message_user(request, f"{orphan.symbol}: recovered as trade {trade.pk}.", messages.SUCCESS)

    @admin.action(description="Dismiss (with a reason)…", permissions=["fix"])
    def dismiss(self, request, queryset):
        orphans = list(queryset.select_related("account"))
        form = DismissForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            for orphan in orphans:
                if dismiss_orphan(orphan, reason=form.cleaned_data["reason"], actor=actor_of(request)):
                    self.log_change(request, orphan, f"dismissed: {form.cleaned_data['reason']}")
                    self.message_user(request, f"{orphan.symbol}: dismissed.", messages.SUCCESS)
                else:
                    self.message_user(request, f"{orphan}: not open any more, left as it is.", messages.WARNING)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Dismiss orphan positions",
            "opts": self.model._meta,
            "orphans": orphans,
            "form": form,
            "action": "dismiss",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/reconciliation/orphanposition/dismiss.html", context)
