"""Set up Django for a standalone benchmark: the project's settings on a throw-away SQLite file, or on
DATABASE_URL if set (a MySQL database is created if missing), migrated, with throw-away keys."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> dict:
    """Configure and migrate; return the environment a child process (a Celery worker) needs to join in."""
    sys.path.insert(0, str(ROOT))
    from cryptography.fernet import Fernet

    var = tempfile.mkdtemp(prefix="tradeops-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeops.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    os.environ.setdefault("FIELD_ENCRYPTION_KEY", Fernet.generate_key().decode())
    os.environ["TRADEOPS_VAR_DIR"] = var
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if os.environ.get("DATABASE_URL", "").startswith("mysql"):
        _create_mysql_database(os.environ["DATABASE_URL"])
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return {
        key: os.environ[key]
        for key in (
            "DJANGO_SETTINGS_MODULE",
            "DJANGO_SECRET_KEY",
            "FIELD_ENCRYPTION_KEY",
            "TRADEOPS_VAR_DIR",
            "LOG_LEVEL",
        )
    } | {key: os.environ[key] for key in ("DATABASE_URL", "CELERY_BROKER_URL") if key in os.environ}


def _create_mysql_database(url: str) -> None:
    from urllib.parse import urlsplit

    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname, port=parts.port or 3306, user=parts.username, password=parts.password or ""
    )
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{parts.path.lstrip('/')}` CHARACTER SET utf8mb4")
    conn.close()
