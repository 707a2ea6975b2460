"""What every admin of the operators' desk shares: read-only model admins, the one "fix" permission for actions, and
who did it (the actor recorded on audit events). Imports nothing of `reconciliation`."""

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from .permissions import FIX_PERMISSION


class FixPermissionMixin:
    """`@admin.action(permissions=["fix"])` asks `has_fix_permission`: the one permission for changing things."""

    def has_fix_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(FIX_PERMISSION)


def actor_of(request: HttpRequest) -> str:
    return request.user.get_username()


class ReadOnlyAdmin(admin.ModelAdmin):
    """Audit and history: looked at, never edited, added or deleted from the admin."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
