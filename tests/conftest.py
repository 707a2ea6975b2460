import pytest
from django.db import connection

from tests.admin_helpers import staff_in
from tests.factories import AccountFactory
from trades import egress
from trades.binance_client import EXCHANGE_CLOCK
from trades.permissions import OBSERVERS, OPERATORS

pytest_plugins = ["sandbox.pytest_plugin"]


@pytest.fixture(autouse=True)
def fresh_exchange_clock():
    """Each test starts with no known offset to the exchange's clock (a fresh process): the first signed call syncs.
    The sandbox is shared by the session and tests move its clock; an offset learnt in one must not leak."""
    EXCHANGE_CLOCK.reset()
    yield
    EXCHANGE_CLOCK.reset()


@pytest.fixture(autouse=True)
def fresh_egress_budget():
    """Each test starts with a fresh fleet-wide weight budget (no counts, no 429/418 marks: a fault injected by one
    test must not stop the next), assuming Binance's published 2,400 weight/min without asking exchangeInfo first
    (tests count requests; the ones about learning the limit call EXCHANGE_LIMITS.reset())."""
    egress.EXCHANGE_LIMITS.reset(assumed=egress.DEFAULT_WEIGHT_LIMIT)
    egress.shared_budget().clear()
    yield
    egress.shared_budget().clear()
    egress.EXCHANGE_LIMITS.reset()


@pytest.fixture
def mysql_only():
    """Skip (with the reason shown by -ra) unless the tests run on MariaDB/MySQL."""
    if connection.vendor != "mysql":
        pytest.skip("needs MariaDB/MySQL: run with DATABASE_URL=mysql://… (.ci/run does)")


@pytest.fixture
def admin_client_logged_in(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.fixture
def binance(exchange, settings):
    """The sandbox exchange (reset for this test), with the settings pointing every Binance URL at it."""
    settings.BINANCE_FUTURES_REST_URL = exchange.rest_url
    settings.BINANCE_FUTURES_WS_URL = exchange.ws_url
    settings.BINANCE_FUTURES_TESTNET_REST_URL = exchange.rest_url
    settings.BINANCE_FUTURES_TESTNET_WS_URL = exchange.ws_url
    return exchange


@pytest.fixture
def make_account(binance, db):
    """make_account(**fields) → a DB Account whose keys are a fresh sandbox account's."""

    def make(**fields):
        creds = binance.control.create_account()
        return AccountFactory(api_key=creds["api_key"], api_secret=creds["api_secret"], **fields)

    return make


@pytest.fixture
def account(make_account):
    return make_account()


@pytest.fixture
def operator(django_user_model):
    """A staff user in the operators group (view + trades.fix_trade); operator_client is the test client logged in as
    them. observer / observer_client: the observers group (view only). Used by the admin tests of trades and
    reconciliation (tests/admin_helpers.py has staff_in and run_action)."""
    return staff_in(django_user_model, "night-operator", OPERATORS)


@pytest.fixture
def observer(django_user_model):
    return staff_in(django_user_model, "observer", OBSERVERS)


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def observer_client(client, observer):
    client.force_login(observer)
    return client
