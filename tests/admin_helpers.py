"""Users for admin tests: an operator (operators group: view + trades.fix_trade) and an observer (view only). The
fixtures (operator, observer, operator_client, observer_client) are in tests/conftest.py."""

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group

from trades.permissions import ensure_operator_groups


def staff_in(django_user_model, username: str, group: str):
    ensure_operator_groups()  # the migration made them; a transactional test's flush may have removed them
    user = django_user_model.objects.create_user(username, password="pw-for-tests-only", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def run_action(client, url: str, action: str, objects, **extra):
    """POST an admin changelist action on `objects` as the changelist form does."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(o.pk) for o in objects], "index": "0", **extra}
    return client.post(url, data)
