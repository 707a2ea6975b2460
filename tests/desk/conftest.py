from tests.admin_helpers import observer, observer_client, operator, operator_client  # noqa: F401 — shared fixtures
