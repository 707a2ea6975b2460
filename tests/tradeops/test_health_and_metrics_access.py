"""Who sees what on /health/ and /metrics: the details (they name every account) only with METRICS_TOKEN as a bearer
token or as a logged-in staff user; /metrics only with the token once one is configured, open without one."""

import pytest
from django.test import Client
from django.utils import timezone

from reconciliation.models import AccountSyncState
from tests.access_helpers import logged_in
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-4c1f0a9e7b2d"
ACCOUNT = "desk-with-a-telling-name"


@pytest.fixture
def account():
    account = AccountFactory(name=ACCOUNT)
    AccountSyncState.objects.create(
        account=account,
        stream_state="connected",
        stream_state_at=timezone.now(),
        stream_heartbeat_at=timezone.now(),
        used_weight=5,
    )
    return account


@pytest.fixture
def with_token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_CACHE_SEC = 0


def bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def assert_up_down_only(response):
    body = response.json()
    assert set(body) == {"status", "checks"}
    assert body["status"] in ("ok", "error")
    assert set(body["checks"].values()) <= {"ok", "error"}
    assert ACCOUNT not in response.content.decode()


@pytest.mark.parametrize("configured", [False, True])
def test_health_tells_anonymous_callers_only_up_or_down(configured, settings, account, client):
    settings.METRICS_TOKEN = TOKEN if configured else ""
    assert_up_down_only(client.get("/health/"))
    assert_up_down_only(client.get("/health/", **bearer("wrong-token")))
    assert_up_down_only(client.get("/health/", {"token": TOKEN}))  # the header only


def test_health_without_a_token_configured_ignores_any_bearer(settings, account, client):
    settings.METRICS_TOKEN = ""
    assert_up_down_only(client.get("/health/", **bearer("")))
    assert_up_down_only(client.get("/health/", HTTP_AUTHORIZATION="Bearer"))


def test_health_details_with_the_token(with_token, account, client):
    body = client.get("/health/", **bearer(TOKEN)).json()
    assert ACCOUNT in body["details"]["user_stream"]
    assert client.get("/health/", HTTP_AUTHORIZATION=f"bearer  {TOKEN} ").json()["details"]  # scheme is any case


@pytest.mark.parametrize("configured", [False, True])
@pytest.mark.parametrize("role", ["observer", "operator", "superuser"])
def test_health_details_for_a_logged_in_staff_user(configured, role, settings, account):
    settings.METRICS_TOKEN = TOKEN if configured else ""
    body = logged_in(role).get("/health/").json()
    assert ACCOUNT in body["details"]["user_stream"]


def test_health_no_details_for_a_logged_in_user_who_is_not_staff(django_user_model, account):
    user = django_user_model.objects.create_user("customer", password="pw-for-tests-only")
    client = Client()
    client.force_login(user)
    assert_up_down_only(client.get("/health/"))


def test_metrics_need_the_token_once_one_is_configured(with_token, account, client):
    for headers in ({}, bearer("wrong-token"), bearer(TOKEN[:-1]), {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert ACCOUNT not in response.content.decode()
    assert client.get("/metrics", {"token": TOKEN}).status_code == 401  # the header only

    response = client.get("/metrics", **bearer(TOKEN))
    assert response.status_code == 200
    assert f'tradeops_binance_used_weight{{account="{ACCOUNT}"}} 5.0' in response.content.decode()


def test_metrics_stay_open_without_a_token_configured(settings, account, client):
    settings.METRICS_TOKEN = ""
    settings.METRICS_CACHE_SEC = 0
    response = client.get("/metrics")
    assert response.status_code == 200
    assert ACCOUNT in response.content.decode()


def test_tokens_are_compared_in_constant_time(with_token, client, monkeypatch):
    import hmac

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    client.get("/metrics", **bearer("guess"))
    assert compared == [(b"guess", TOKEN.encode())]
