"""The operators' desk (first version). State changes never happen here: trade state is read-only in the admin and
later actions call the reconciliation services."""

from django import forms
from django.contrib import admin
from django.utils import timezone
from django.utils.timesince import timesince

from .models import Account, Trade, TradeEvent


def mask(value: str, keep: int = 4) -> str:
    if not value:
        return ""
    if len(value) <= keep * 2:
        return "•" * len(value)
    return f"{value[:keep]}…{value[-keep:]}"


class AccountForm(forms.ModelForm):
    # The secret is write-only: the widget never renders the stored value, and leaving it empty keeps it.
    api_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the stored secret.",
    )

    class Meta:
        model = Account
        fields = ["name", "api_key", "api_secret", "is_active", "use_testnet"]

    def clean_api_secret(self):
        secret = self.cleaned_data.get("api_secret")
        if secret:
            return secret
        if self.instance.pk:
            return self.instance.api_secret
        raise forms.ValidationError("An API secret is required for a new account.")


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountForm
    list_display = ["name", "masked_api_key", "is_active", "use_testnet", "updated_at"]
    list_filter = ["is_active", "use_testnet"]
    search_fields = ["name"]

    @admin.display(description="API key")
    def masked_api_key(self, obj):
        return mask(obj.api_key)


class TradeEventInline(admin.TabularInline):
    model = TradeEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "source", "from_status", "to_status", "filled_qty", "actor", "payload"]
    readonly_fields = fields
    ordering = ["created_at", "pk"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Trade)
class TradeAdmin(admin.ModelAdmin):
    list_display = ["id", "account", "client_order_id", "symbol", "side", "quantity", "filled_qty", "price", "status", "age"]
    list_filter = ["status", "account", "symbol"]
    search_fields = ["client_order_id", "=entry_order_id"]
    date_hierarchy = "created_at"
    list_select_related = ["account"]
    inlines = [TradeEventInline]
    # Trade state is the exchange's truth applied by the reconciliation rule; nobody edits it by hand here.
    readonly_fields = [field.name for field in Trade._meta.fields]

    @admin.display(description="age", ordering="created_at")
    def age(self, obj):
        return timesince(obj.created_at, timezone.now())

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TradeEvent)
class TradeEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "trade", "source", "from_status", "to_status", "filled_qty", "actor"]
    list_filter = ["source", "to_status"]
    search_fields = ["trade__client_order_id", "=trade__entry_order_id"]
    list_select_related = ["trade"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
