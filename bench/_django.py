"""Set up Django for a standalone benchmark: the project's settings on a throw-away SQLite file (or DATABASE_URL,
if set), migrated, with throw-away keys."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    from cryptography.fernet import Fernet

    var = tempfile.mkdtemp(prefix="tradeops-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeops.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    os.environ.setdefault("FIELD_ENCRYPTION_KEY", Fernet.generate_key().decode())
    os.environ["TRADEOPS_VAR_DIR"] = var
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
