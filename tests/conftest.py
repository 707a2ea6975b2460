import pytest
from django.db import connection

# (sandbox fixtures are registered here once the sandbox lands)


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
