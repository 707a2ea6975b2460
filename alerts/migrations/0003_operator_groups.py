"""Observers and operators (trades/permissions.py) see the alerts; operators may also send a test alert."""

from django.db import migrations


def grant(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    config = apps.get_app_config("alerts")
    config.models_module = True
    create_permissions(config, verbosity=0, apps=apps)
    config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view = Permission.objects.get(content_type__app_label="alerts", codename="view_alert")
    test = Permission.objects.get(content_type__app_label="alerts", codename="send_test_alert")
    observers, _ = Group.objects.get_or_create(name="observers")
    observers.permissions.add(view)
    operators, _ = Group.objects.get_or_create(name="operators")
    operators.permissions.add(view, test)


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    for group in apps.get_model("auth", "Group").objects.filter(name__in=["observers", "operators"]):
        group.permissions.remove(*Permission.objects.filter(content_type__app_label="alerts"))


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0002_evaluate_schedule"),
        ("trades", "0004_operator_groups"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
