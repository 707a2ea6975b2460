"""Settings for the test suite: the production settings plus fixed, test-only secrets and fast hashing.

DATABASE_URL / CELERY_BROKER_URL still come from the environment, so the same suite runs on SQLite and on MariaDB.
"""

import os

# Test-only keys (never used anywhere else). setdefault: an explicit environment still wins.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production")
os.environ.setdefault("FIELD_ENCRYPTION_KEY", "2rrJ6Kp0d3hL2n-1mGsB5t4hXn3PqGQ8l2c7Ew5oW0Y=")
os.environ.setdefault("TRADEOPS_VAR_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "var", "test"))

from .settings import *  # noqa: F403 — the production settings, then the test overrides below
from .settings import DATABASES, INSTALLED_APPS, VAR_DIR

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if "demo" not in INSTALLED_APPS:  # the development commands are tested too
    INSTALLED_APPS = [*INSTALLED_APPS, "demo"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not Django's shared-cache in-memory database: worker threads in the tests then get SQLite's real
    # locking (WAL + busy timeout) instead of "database table is locked".
    # One file per test run (pid): two runs in one work tree never share (and corrupt) a test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
