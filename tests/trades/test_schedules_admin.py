"""django-celery-beat's schedules in the admin: only users with the change permission (a superuser here) may
enable, disable, toggle or run them; observers and operators see them read-only and are offered no action — and a
POST of one anyway changes nothing."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tests.access_helpers import logged_in, post_form

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_celery_beat_periodictask_changelist")
ACTIONS = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks")


@pytest.fixture
def schedules():
    """The schedules the migration created (reconcile, positions, deep pass, pruning), plus one disabled."""
    every, _ = IntervalSchedule.objects.get_or_create(every=30, period="seconds")
    PeriodicTask.objects.create(
        name="test: disabled", task="reconciliation.tasks.reconcile_all_accounts", interval=every, enabled=False
    )
    return list(PeriodicTask.objects.order_by("pk"))


@pytest.fixture
def sent(monkeypatch):
    """Task messages the admin's run action sends (recorded, not sent)."""
    from celery.app.task import Task

    calls = []
    monkeypatch.setattr(Task, "apply_async", lambda task, *args, **kwargs: calls.append(task.name))
    return calls


def state():
    return list(PeriodicTask.objects.order_by("pk").values_list("name", "enabled", "last_run_at"))


def post_action(client, action, objects):
    return post_form(
        client, CHANGELIST, {"action": action, ACTION_CHECKBOX_NAME: [str(o.pk) for o in objects], "index": "0"}
    )


@pytest.mark.parametrize("role", ["observer", "operator"])
def test_view_only_users_are_offered_no_action_and_a_posted_one_changes_nothing(role, schedules, sent):
    client = logged_in(role)
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    for action in ACTIONS:
        assert f'value="{action}"' not in html
    before = state()

    for action in ACTIONS:
        response = post_action(client, action, schedules)
        assert response.status_code in (200, 302, 403), action
        assert state() == before, action
    assert sent == []


@pytest.mark.parametrize("role", ["observer", "operator"])
def test_view_only_users_see_a_schedule_read_only(role, schedules):
    client = logged_in(role)
    task = schedules[0]
    url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])

    page = client.get(url)
    assert page.status_code == 200
    assert task.name in page.content.decode()
    assert 'name="enabled"' not in page.content.decode()  # no input: read-only
    before = state()
    assert (
        post_form(
            client, url, {"name": task.name, "task": task.task, "enabled": "", "interval": task.interval_id}
        ).status_code
        == 403
    )
    assert state() == before
    add = reverse("admin:django_celery_beat_periodictask_add")
    assert client.get(add).status_code == 403
    for model in ("intervalschedule", "crontabschedule"):
        assert client.get(reverse(f"admin:django_celery_beat_{model}_changelist")).status_code == 200


def test_a_superuser_can_run_every_action(schedules, sent):
    client = logged_in("superuser")
    html = client.get(CHANGELIST).content.decode()
    for action in ACTIONS:
        assert f'value="{action}"' in html

    post_action(client, "disable_tasks", schedules)
    assert not PeriodicTask.objects.filter(enabled=True).exists()
    post_action(client, "toggle_tasks", schedules[:1])
    assert list(PeriodicTask.objects.filter(enabled=True)) == schedules[:1]
    post_action(client, "enable_tasks", schedules)
    assert not PeriodicTask.objects.filter(enabled=False).exists()
    post_action(client, "run_tasks", schedules[:2])
    assert sorted(sent) == sorted(task.task for task in schedules[:2])


def test_an_action_declared_without_permissions_is_withheld_from_view_only_users(rf):
    from django.contrib import admin

    from tests.access_helpers import desk_user
    from trades.schedules_admin import PeriodicTaskAdmin

    class WithANewAction(PeriodicTaskAdmin):  # as a later django-celery-beat might add one
        actions = (*PeriodicTaskAdmin.actions, "pause_everything")

        @admin.action(description="Pause everything")
        def pause_everything(self, request, queryset):
            queryset.update(enabled=False)

    model_admin = WithANewAction(PeriodicTask, admin.site)
    for role, offered in (("observer", set()), ("operator", set()), ("superuser", {*ACTIONS, "pause_everything"})):
        request = rf.get(CHANGELIST)
        request.user = desk_user(role)
        assert set(model_admin.get_actions(request)) - {"delete_selected"} == offered, role
