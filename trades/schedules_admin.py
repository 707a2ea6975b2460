"""django-celery-beat's admin, with its actions behind the change permission.

django-celery-beat's PeriodicTaskAdmin declares its actions (enable, disable, toggle, run) without permissions, and
Django offers such an action to anyone who may view the list: an observer (view rights on the app) could switch off
every schedule — the reconcile among them — with one POST. Here each of those actions needs the change permission
on the model (`django_celery_beat.change_periodictask`): observers and operators hold only view rights on
schedules, so they get no action and read-only forms (Django's own view-only pages); a superuser, or whoever is
given that permission, keeps them all. An action a later django-celery-beat adds without declaring permissions is
withheld the same way. Imported by trades/admin.py, which re-registers the schedules' admins with these.
"""

from functools import wraps
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule


def needs_change_permission(action):
    """django-celery-beat's `action`, offered only to users with the change permission, and refusing anyone else
    even if reached another way."""

    @wraps(action)
    def guarded(modeladmin, request, queryset):
        if not modeladmin.has_change_permission(request):
            raise PermissionDenied
        return action(modeladmin, request, queryset)

    return admin.action(permissions=("change",))(guarded)


if TYPE_CHECKING:  # the mixin goes before a ModelAdmin: what it calls on super() and self is the ModelAdmin's
    _ModelAdminBase = admin.ModelAdmin[Any]
else:
    _ModelAdminBase = object


class ChangePermissionActionsMixin(_ModelAdminBase):
    def get_actions(self, request):
        actions = super().get_actions(request)
        if self.has_change_permission(request):
            return actions
        # An action that declares no permission of its own is for users who may change schedules only.
        return {
            name: action
            for name, action in actions.items()
            if action is not None and getattr(action[0], "allowed_permissions", None)
        }


class PeriodicTaskAdmin(ChangePermissionActionsMixin, beat_admin.PeriodicTaskAdmin):
    enable_tasks = needs_change_permission(beat_admin.PeriodicTaskAdmin.enable_tasks)
    disable_tasks = needs_change_permission(beat_admin.PeriodicTaskAdmin.disable_tasks)
    toggle_tasks = needs_change_permission(beat_admin.PeriodicTaskAdmin.toggle_tasks)
    run_tasks = needs_change_permission(beat_admin.PeriodicTaskAdmin.run_tasks)


class IntervalScheduleAdmin(ChangePermissionActionsMixin, beat_admin.IntervalScheduleAdmin):
    pass


class CrontabScheduleAdmin(ChangePermissionActionsMixin, beat_admin.CrontabScheduleAdmin):
    pass


class SolarScheduleAdmin(ChangePermissionActionsMixin, beat_admin.SolarScheduleAdmin):
    pass


class ClockedScheduleAdmin(ChangePermissionActionsMixin, beat_admin.ClockedScheduleAdmin):
    pass


def register(site=admin.site) -> None:
    """Replace django-celery-beat's registrations on `site` with the ones above."""
    for model, model_admin in (
        (PeriodicTask, PeriodicTaskAdmin),
        (IntervalSchedule, IntervalScheduleAdmin),
        (CrontabSchedule, CrontabScheduleAdmin),
        (SolarSchedule, SolarScheduleAdmin),
        (ClockedSchedule, ClockedScheduleAdmin),
    ):
        if site.is_registered(model):
            site.unregister(model)
        site.register(model, model_admin)
