"""python manage.py dev_setup: what `make run` needs before it starts the processes (development only).

- a superuser `admin` whose password is generated once and kept in var/dev-admin-password (0600), printed here;
- the demo account (`demo`, generated keys) that the story registers in the sandbox.
Refuses unless DJANGO_DEBUG is on: production never gets a well-known admin or a demo account.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from demo.story import DEMO_ACCOUNT
from trades.models import Account

ADMIN_USER = "admin"


class Command(BaseCommand):
    help = "Development only: create the dev admin user (password printed) and the demo account."

    def add_arguments(self, parser):
        parser.add_argument("--admin-url", default="http://127.0.0.1:8000/admin/")

    def handle(self, *args, admin_url, **options):
        if not settings.DEBUG:
            raise CommandError("dev_setup is for development only (DJANGO_DEBUG=1); it creates a known admin user")
        path = settings.VAR_DIR / "dev-admin-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        password = path.read_text().strip()
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=ADMIN_USER, defaults={"email": "admin@localhost"})
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        Account.objects.get_or_create(
            name=DEMO_ACCOUNT,
            defaults={"api_key": secrets.token_hex(32), "api_secret": secrets.token_hex(32), "is_active": True},
        )
        self.stdout.write(
            f"\n  admin:    {admin_url}\n  user:     {ADMIN_USER}\n  password: {password}\n"
            f"  (development only; kept in {path})\n\n"
        )
