"""The observers (view only) and operators (view + trades.fix_trade) groups; see trades/permissions.py."""

from django.db import migrations


def create_groups(apps, schema_editor):
    from trades.permissions import ensure_operator_groups

    ensure_operator_groups(apps)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["observers", "operators"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("trades", "0003_fix_trade_permission"),
        ("reconciliation", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
