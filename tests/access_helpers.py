"""The three kinds of desk user, logged in through the admin's real login form: an observer (observers group: view
only), an operator (operators group: view + trades.fix_trade) and a superuser."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from trades.permissions import OBSERVERS, OPERATORS, ensure_operator_groups

PASSWORD = "pw-for-tests-only"
ROLES = ("observer", "operator", "superuser")


def desk_user(role: str):
    User = get_user_model()
    if role == "superuser":
        return User.objects.create_superuser(f"root-{role}", f"{role}@example.com", PASSWORD)
    ensure_operator_groups()  # the migration made them; a transactional test's flush may have removed them
    user = User.objects.create_user(f"desk-{role}", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name={"observer": OBSERVERS, "operator": OPERATORS}[role]))
    return user


def logged_in(role: str) -> Client:
    """A client (CSRF checks on, as a browser) that logged in with the admin's login form as a fresh `role` user."""
    user = desk_user(role)
    client = Client(enforce_csrf_checks=True)
    login_url = reverse("admin:login")
    client.get(login_url)
    response = client.post(
        login_url,
        {
            "username": user.get_username(),
            "password": PASSWORD,
            "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
            "next": reverse("admin:index"),
        },
    )
    assert response.status_code == 302, f"login as {role} failed"
    client.user = user
    return client


def post_form(client: Client, url: str, data: dict):
    """POST as the browser would: with the CSRF token from the client's cookie."""
    return client.post(url, {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
