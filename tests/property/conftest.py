import os

from hypothesis import settings

from .profiles import DEFAULT_PROFILE


def pytest_configure(config):
    """--hypothesis-profile wins, then HYPOTHESIS_PROFILE, then "ci" (profiles.py). Also runs when this conftest
    is loaded late (a whole-suite run), so the property modules always see the chosen profile at import."""
    settings.load_profile(
        config.getoption("hypothesis_profile", None) or os.environ.get("HYPOTHESIS_PROFILE") or DEFAULT_PROFILE
    )
