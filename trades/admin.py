"""The operators' desk: accounts, trades and their audit trail.

State never changes here: trade state is read-only, and every action calls a reconciliation service
(`reconciliation.orders.operator`, `reconciliation.positions.operator`, `reconciliation.services`,
`reconciliation.tasks`). Every action that changes
anything needs `trades.fix_trade` ("operators" group); "observers" only see. Trade changes are audited as TradeEvents
carrying the admin user (actor); account runs and cancel requests also go to the admin's history (LogEntry).
"""

from datetime import timedelta
from functools import partial

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.timesince import timesince

from desk import display
from reconciliation import services, tasks
from reconciliation.models import AccountSyncState
from reconciliation.operator import OperatorActionRefused
from reconciliation.orders import operator as order_operator
from reconciliation.positions.operator import close_trade_manually

from . import schedules_admin
from .admin_base import FixPermissionMixin, ReadOnlyAdmin, actor_of
from .models import Account, Trade, TradeEvent

MAX_TRADES_PER_ACTION = 50  # each costs a Binance call made during the request
MAX_ACCOUNTS_PER_ACTION = 10


def mask(value: str, keep: int = 4) -> str:
    """All but the last `keep` characters hidden, behind a fixed-width prefix (the length is not told either); a
    value too short to keep anything private is hidden entirely."""
    if not value:
        return ""
    if len(value) <= keep * 2:
        return "•" * 8
    return "••••" + value[-keep:]


# --- Accounts ---------------------------------------------------------------------------------------------------------


class AccountForm(forms.ModelForm):
    # The secret is write-only: the widget never renders the stored value, and leaving it empty keeps it. The form
    # does not even hold it as an initial value, so "changed" (and the admin's history message) means a new one was
    # typed.
    api_secret = forms.CharField(
        label="API secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the stored secret.",
    )

    # The API key is replaced the same way; the page shows it masked (its last 4 characters) as a placeholder.
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        max_length=Account._meta.get_field("api_key").max_length,
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 70}),
        help_text="Shown masked. Leave empty to keep the stored key; type a new one to replace it.",
    )

    class Meta:
        model = Account
        fields = ["name", "api_key", "api_secret", "is_active", "use_testnet"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial.pop("api_secret", None)
        self.initial.pop("api_key", None)
        if self.instance.pk:
            self.fields["api_key"].widget.attrs["placeholder"] = mask(self.instance.api_key)

    def clean_api_key(self):
        key = self.cleaned_data.get("api_key")
        if key:
            return key
        if self.instance.pk:
            return self.instance.api_key
        raise forms.ValidationError("An API key is required for a new account.")

    def clean_api_secret(self):
        secret = self.cleaned_data.get("api_secret")
        if secret:
            return secret
        if self.instance.pk:
            return self.instance.api_secret
        raise forms.ValidationError("An API secret is required for a new account.")


def _sync_state(account) -> AccountSyncState | None:
    try:
        return account.sync_state
    except AccountSyncState.DoesNotExist:
        return None


def _report_summary(report: dict) -> str:
    if not report:
        return "—"
    if report.get("skipped"):
        return "skipped: another reconcile of this account is running"
    keys = [
        "checked",
        "opened",
        "progress",
        "cancelled",
        "failed",
        "corrected",
        "rechecked",
        "missed_events",
        "needs_operator",
        "errors",
    ]
    parts = [f"{key} {report[key]}" for key in keys if report.get(key)]
    parts += [f"{key} {value}" for key, value in (report.get("extra") or {}).items() if value]
    weight = f"; weight {report['weight_used']}" if "weight_used" in report else ""  # Binance request weight spent
    return f"{report.get('outcome', '?')}: " + (", ".join(parts) or "nothing to do") + weight


@admin.register(Account)
class AccountAdmin(FixPermissionMixin, admin.ModelAdmin):
    """Accounts. The API secret is never rendered, to anyone, nor the full API key: users who may change accounts
    get write-only inputs for both (empty keeps the stored value; the key's placeholder is masked); everybody else
    gets `VIEW_ONLY_FIELDS`, where the secret is only "stored" or "not set" and the key is masked but for its last 4
    characters. The list masks the key for everyone; search is by name only."""

    form = AccountForm
    # What a user without the change permission (observers, operators) sees on an account's page. Django renders
    # every field of a view-only page read-only, from the model: "api_secret" there would be the decrypted secret.
    VIEW_ONLY_FIELDS = [
        "name",
        "masked_api_key",
        "api_secret_status",
        "is_active",
        "use_testnet",
        "position_mode",
        "created_at",
        "updated_at",
    ]
    list_display = [
        "name",
        "exposure",
        "masked_api_key",
        "is_active",
        "use_testnet",
        "position_mode",
        "last_reconcile",
        "last_result",
        "stream",
        "stream_last_event",
        "used_weight",
    ]
    # Learned from Binance (GET /fapi/v1/positionSide/dual), never typed in.
    readonly_fields = ["position_mode"]
    list_filter = ["is_active", "use_testnet"]
    list_select_related = ["sync_state"]
    search_fields = ["name"]
    actions = ["reconcile_now", "sync_positions_now"]

    @admin.display(description="API key")
    def masked_api_key(self, obj):
        return mask(obj.api_key)

    @admin.display(description="position mode")
    def position_mode(self, obj):
        if obj.dual_side_position is None:
            return "not read from Binance yet"
        mode = "hedge (LONG / SHORT)" if obj.dual_side_position else "one-way (BOTH)"
        checked = obj.position_mode_checked_at
        return f"{mode}, read {timesince(checked, timezone.now())} ago" if checked else mode

    @admin.display(description="exposure")
    def exposure(self, obj):
        return display.exposure_link(obj)

    @admin.display(description="API secret")
    def api_secret_status(self, obj):
        return "stored (write-only, never shown)" if obj.api_secret else "not set"

    def get_fields(self, request, obj=None):
        if obj is not None and not self.has_change_permission(request, obj):
            return list(self.VIEW_ONLY_FIELDS)
        return super().get_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if "api_secret" in readonly or "api_key" in readonly:  # a read-only field renders the model's value
            raise ImproperlyConfigured(
                "AccountAdmin: api_secret and api_key are never read-only fields; show "
                "api_secret_status / masked_api_key instead"
            )
        return readonly

    @admin.display(description="last reconcile")
    def last_reconcile(self, obj):
        state = _sync_state(obj)
        return _ago(state.last_reconcile_at if state else None, missing="never")

    @admin.display(description="last result")
    def last_result(self, obj):
        state = _sync_state(obj)
        return _report_summary(state.last_reconcile_report) if state else "—"

    @admin.display(description="user stream")
    def stream(self, obj):
        state = _sync_state(obj)
        if state is None or not state.stream_state:
            return "not running"
        since = f" for {timesince(state.stream_state_at, timezone.now())}" if state.stream_state_at else ""
        if state.stream_deaf_since:  # connected, but REST keeps finding order changes it never delivered
            return (
                f"DEAF (missing events) for {timesince(state.stream_deaf_since, timezone.now())}; "
                f"{state.stream_state}{since}"
            )
        return f"{state.stream_state}{since}"

    @admin.display(description="last stream event")
    def stream_last_event(self, obj):
        state = _sync_state(obj)
        return _ago(state.stream_last_event_at if state else None, missing="—")

    @admin.display(description="used weight (1m)")
    def used_weight(self, obj):
        state = _sync_state(obj)
        return state.used_weight if state else 0

    def _run_for_accounts(self, request, queryset, what, run):
        # Synchronous on purpose: the operator sees the result at once, and it works when the workers or the broker
        # are what is broken. Bounded: at most MAX_ACCOUNTS_PER_ACTION, each under the weight budget and the lease.
        for account in queryset[:MAX_ACCOUNTS_PER_ACTION]:
            try:
                report = run(account)
            except Exception as exc:  # noqa: BLE001 — one account's failure is reported, the others still run
                self.message_user(request, f"{account}: {what} failed: {type(exc).__name__}: {exc}", messages.ERROR)
                continue
            summary = _report_summary(report)
            self.log_change(request, account, f"{what} (admin): {summary}")
            level = messages.SUCCESS if report.get("outcome") == "ok" else messages.WARNING
            self.message_user(request, f"{account}: {what}: {summary} ({report.get('duration_ms', 0)} ms)", level)

    @admin.action(description="Reconcile now (pending trades vs Binance)", permissions=["fix"])
    def reconcile_now(self, request, queryset):
        self._run_for_accounts(
            request,
            queryset,
            "reconcile",
            lambda account: services.reconcile_pending(account, reason="admin", actor=actor_of(request)),
        )

    @admin.action(description="Sync positions now", permissions=["fix"])
    def sync_positions_now(self, request, queryset):
        self._run_for_accounts(
            request,
            queryset,
            "position sync",
            lambda account: services.sync_positions_with_binance(account, reason="admin", actor=actor_of(request)),
        )


# --- Trades -----------------------------------------------------------------------------------------------------------


class TradeEventInline(admin.TabularInline):
    model = TradeEvent
    extra = 0
    can_delete = False
    fields = display.AUDIT_INLINE_FIELDS  # from → to, source, actor and Binance's facts, not raw JSON
    readonly_fields = fields
    ordering = ["created_at", "pk"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class StalePendingFilter(admin.SimpleListFilter):
    """Pending trades older than N minutes: what the reconcile should have settled by now."""

    title = "stale pending"
    parameter_name = "stale"
    MINUTES = (5, 30, 120)

    def lookups(self, request, model_admin):
        return [(str(m), f"pending > {m} min") for m in self.MINUTES]

    def queryset(self, request, queryset):
        value = self.value()
        if value not in {str(m) for m in self.MINUTES}:
            return queryset
        cutoff = timezone.now() - timedelta(minutes=int(value))
        return queryset.filter(status=Trade.Status.PENDING, created_at__lt=cutoff)


class NeedsOperatorFilter(admin.SimpleListFilter):
    title = "needs an operator"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [("yes", "flagged"), ("no", "not flagged")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(needs_operator=self.value() == "yes")
        return queryset


class ManualMarkForm(forms.Form):
    status = forms.ChoiceField(
        choices=[(s, s) for s in order_operator.MANUAL_STATUSES],
        widget=forms.RadioSelect,
        initial=Trade.Status.FAILED,
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=500,
        help_text="Why, for the audit trail. Binance is asked first: a trade it shows filled or still working is "
        "refused.",
    )


class ManualCloseForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=500,
        help_text="Why, for the audit trail (e.g. which order closed it). Binance's position is asked first.",
    )


@admin.register(Trade)
class TradeAdmin(FixPermissionMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "account",
        "client_order_id",
        "symbol",
        "side",
        "position_side",
        display.money_column("quantity"),
        display.money_column("filled_qty", "filled qty"),
        display.money_column("closed_qty", "closed qty"),
        display.money_column("price"),
        display.badge_column("status"),
        "status_reason",
        "needs_operator",
        "age",
    ]
    list_filter = [StalePendingFilter, NeedsOperatorFilter, "status", "position_side", "account", "symbol"]
    search_fields = ["client_order_id", "=entry_order_id"]
    date_hierarchy = "created_at"
    list_select_related = ["account"]
    inlines = [TradeEventInline]
    actions = ["verify_on_binance", "cancel_and_verify", "mark_manually", "close_manually"]
    # Trade state is the exchange's truth applied by the reconciliation rule; nobody edits it by hand here.
    # Shown as the desk reads them (desk/display.py): money without trailing zeros, Binance's ms as local time.
    readonly_fields = display.readable_readonly_fields(Trade)
    exclude = display.replaced_field_names(Trade)

    @admin.display(description="age", ordering="created_at")
    def age(self, obj):
        return timesince(obj.created_at, timezone.now())

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # view-only page: every change is an action below

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Verify on Binance (fetch the order, apply it)", permissions=["fix"])
    def verify_on_binance(self, request, queryset):
        trades = list(queryset.select_related("account")[:MAX_TRADES_PER_ACTION])
        results = order_operator.verify_trades_on_binance(trades, actor=actor_of(request))
        context = {
            **self.admin_site.each_context(request),
            "title": "Verified on Binance",
            "opts": self.model._meta,
            "results": results,
            "truncated": queryset.count() > len(trades),
            "limit": MAX_TRADES_PER_ACTION,
        }
        return TemplateResponse(request, "admin/trades/trade/verify_result.html", context)

    @admin.action(description="Cancel and verify (cancel on Binance, then record what it says)", permissions=["fix"])
    def cancel_and_verify(self, request, queryset):
        queued, skipped = [], []
        for trade in queryset[:MAX_TRADES_PER_ACTION]:
            if trade.status != Trade.Status.PENDING:
                skipped.append(trade.pk)
                continue
            transaction.on_commit(partial(tasks.cancel_and_verify.delay, trade.pk, actor_of(request)))
            self.log_change(request, trade, "cancel and verify requested")
            queued.append(trade.pk)
        if queued:
            self.message_user(
                request,
                f"Cancel and verify queued for trade(s) {_ids(queued)}; the result appears in each trade's events.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(request, f"Not pending, not cancelled: {_ids(skipped)}", messages.WARNING)

    @admin.action(description="Mark failed/cancelled manually…", permissions=["fix"])
    def mark_manually(self, request, queryset):
        def mark(trade, data):
            order_operator.mark_trade_manually(
                trade, status=data["status"], reason=data["reason"], actor=actor_of(request)
            )
            return f"marked {trade.status}"

        return self._for_each_with_reason(
            request,
            queryset,
            ManualMarkForm,
            mark,
            verb="marked",
            title="Mark trades failed or cancelled by hand",
            action="mark_manually",
        )

    @admin.action(description="Close open trades by hand…", permissions=["fix"])
    def close_manually(self, request, queryset):
        def close(trade, data):
            close_trade_manually(trade, reason=data["reason"], actor=actor_of(request))
            self.log_change(request, trade, f"closed by hand: {data['reason']}")
            return "closed"

        return self._for_each_with_reason(
            request,
            queryset,
            ManualCloseForm,
            close,
            verb="closed",
            title="Close open trades by hand",
            action="close_manually",
        )

    def _for_each_with_reason(self, request, queryset, form_class, run, *, verb, title, action):
        """An action with a confirm-with-a-reason step (admin/trades/trade/<action>.html): the form first; once it
        is valid, run(trade, cleaned_data) for each selected trade, which returns what was done or raises
        OperatorActionRefused with why not."""
        trades = list(queryset.select_related("account")[:MAX_TRADES_PER_ACTION])
        form = form_class(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            for trade in trades:
                try:
                    done = run(trade, form.cleaned_data)
                except OperatorActionRefused as exc:
                    self.message_user(request, f"Trade {trade.pk} not {verb}: {exc}", messages.ERROR)
                else:
                    self.message_user(request, f"Trade {trade.pk} {done}.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "trades": trades,
            "form": form,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, f"admin/trades/trade/{action}.html", context)


def _ago(moment, *, missing: str) -> str:
    return missing if moment is None else f"{timesince(moment, timezone.now())} ago"


def _ids(pks) -> str:
    return ", ".join(str(pk) for pk in pks)


@admin.register(TradeEvent)
class TradeEventAdmin(ReadOnlyAdmin):
    list_display = display.AUDIT_LIST_COLUMNS
    readonly_fields = display.readable_readonly_fields(TradeEvent, display.event_facts_table)
    exclude = display.replaced_field_names(TradeEvent)
    list_filter = ["source", "to_status"]
    search_fields = ["trade__client_order_id", "=trade__entry_order_id", "actor"]
    list_select_related = ["trade"]
    date_hierarchy = "created_at"


# django-celery-beat's schedules: their actions (enable, disable, run, …) need the change permission.
schedules_admin.register()
