"""Alerts in the operators' desk: the list of causes (read-only) and a "Send a test alert" button, which sends a
test message through ALERT_URLS from a worker (alerts.tasks.send_test_alert)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from .models import Alert
from .notify import admin_link

TEST_PERMISSION = "alerts.send_test_alert"


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    change_list_template = "admin/alerts/alert/change_list.html"
    list_display = ["key", "status", "account_name", "trade_id", "repeats", "first_seen_at", "last_seen_at", "delivery"]
    list_filter = ["status", "kind"]
    search_fields = ["key", "account_name", "message"]
    date_hierarchy = "last_seen_at"
    readonly_fields = [
        "key",
        "kind",
        "status",
        "one_shot",
        "message",
        "link",
        "account_name",
        "trade_id",
        "repeats",
        "first_seen_at",
        "last_seen_at",
        "resolved_at",
        "sent_at",
        "resolved_sent_at",
        "last_error",
    ]
    exclude = ["admin_path", "claim_until"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="delivery")
    def delivery(self, obj: Alert) -> str:
        if obj.resolved_sent_at:
            return "firing and resolved sent"
        if obj.sent_at:
            return "firing sent"
        return obj.last_error or "not sent yet"

    @admin.display(description="admin page")
    def link(self, obj: Alert) -> str:
        return admin_link(obj.admin_path)

    def get_urls(self) -> list[URLPattern]:
        urls: list[URLPattern] = [
            path(
                "send-test/",
                self.admin_site.admin_view(require_POST(self.send_test_view)),
                name="alerts_alert_send_test",
            )
        ]
        return urls + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_send_test_alert": request.user.has_perm(TEST_PERMISSION),
            "alert_urls_configured": bool(settings.ALERT_URLS),
        }
        return super().changelist_view(request, extra_context)

    def send_test_view(self, request: HttpRequest) -> HttpResponse:
        """Send a test alert (POST, with the test permission): queued for a worker; with no ALERT_URLS, says so."""
        from .tasks import send_test_alert

        if not request.user.has_perm(TEST_PERMISSION):
            raise PermissionDenied
        if not settings.ALERT_URLS:
            self.message_user(
                request,
                "ALERT_URLS is not set: alerts are recorded here but not sent anywhere, so no test alert was sent.",
                messages.WARNING,
            )
        else:
            try:
                send_test_alert.delay()
            except Exception as exc:  # noqa: BLE001 — the broker's failure is shown to the operator
                self.message_user(request, f"Could not queue the test alert: {type(exc).__name__}", messages.ERROR)
            else:
                count = len(settings.ALERT_URLS)
                self.message_user(
                    request,
                    f"A test alert is queued for {count} notification URL{'s' if count != 1 else ''} "
                    "(sent by a worker; failures are retried and logged).",
                    messages.SUCCESS,
                )
        return HttpResponseRedirect(reverse("admin:alerts_alert_changelist"))
