"""Who may do what in the operators' desk (the admin).

- ``observers``: view permissions on trades, events, accounts, reconcile runs, orphans, sync state and the beat
  schedules; no action that changes anything is offered to them.
- ``operators``: the same, plus ``trades.fix_trade`` — every admin action that changes a trade, runs an account's
  reconcile or position sync, or recovers/dismisses an orphan checks it.

Both groups are created by a data migration (trades 0004) and can be re-created with ``ensure_operator_groups()``.
"""

from django.apps import apps as global_apps

FIX_PERMISSION = "trades.fix_trade"
OBSERVERS = "observers"
OPERATORS = "operators"
VIEWED_APPS = ("trades", "reconciliation", "django_celery_beat")


def ensure_operator_groups(apps=global_apps) -> None:
    """Create (or complete) the observers and operators groups. Idempotent; `apps` may be a migration's."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():  # permissions are normally created after migrate; we need them now
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, apps=apps)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view = list(Permission.objects.filter(content_type__app_label__in=VIEWED_APPS, codename__startswith="view_"))
    fix = Permission.objects.get(content_type__app_label="trades", codename="fix_trade")
    observers, _ = Group.objects.get_or_create(name=OBSERVERS)
    observers.permissions.add(*view)
    operators, _ = Group.objects.get_or_create(name=OPERATORS)
    operators.permissions.add(*view, fix)
