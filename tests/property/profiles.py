"""Hypothesis profiles for the property tests, registered by conftest.py.

    ci    (the default) derandomized: the same examples on every run and machine, no example database; sized so
          the whole tests/property run stays well under a minute on 2 cores
    deep  random exploration, 20x the examples, failures remembered in var/hypothesis/
          (`pytest tests/property --hypothesis-profile=deep`)
    dev   random, a tenth of the examples: a quick look while editing

A property asks for `examples(n)`: n in the ci profile, scaled by the active profile's max_examples / 100.
"""

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

CI_BASE = 100
_EXAMPLE_DB = DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parents[2] / "var" / "hypothesis"))
_COMMON = {
    # Properties build their rows inside the test body, per example (tests/property/db.py), so pytest-django's
    # function-scoped fixtures are rightly shared by all examples. DB examples are slow-ish: no deadline.
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=CI_BASE, derandomize=True, database=None, **_COMMON)
settings.register_profile("deep", max_examples=CI_BASE * 20, database=_EXAMPLE_DB, **_COMMON)
settings.register_profile("dev", max_examples=CI_BASE // 10, database=_EXAMPLE_DB, **_COMMON)

DEFAULT_PROFILE = "ci"


def examples(ci: int) -> int:
    """How many examples a property runs: `ci` under the ci profile, scaled for the others."""
    return max(1, round(ci * settings.default.max_examples / CI_BASE))
