"""EncryptedTextField: a text column stored as a Fernet token, read and written as plain text through the model."""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@lru_cache(maxsize=4)
def _fernet_for(keys: str) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY is not a valid Fernet key (32 url-safe base64 bytes)."
        ) from exc


def fernet() -> MultiFernet:
    return _fernet_for(settings.FIELD_ENCRYPTION_KEY)


class EncryptedTextField(models.TextField):
    """Encrypts on the way to the database and decrypts on the way back; the plaintext never reaches a column.

    A value that cannot be decrypted (wrong key) raises: silently returning the token would send garbage to Binance.
    """

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return fernet().encrypt(value.encode()).decode()

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        try:
            return fernet().decrypt(value.encode()).decode()
        except InvalidToken as exc:
            raise ImproperlyConfigured(
                f"Cannot decrypt {self.model.__name__}.{self.name}: FIELD_ENCRYPTION_KEY does not match the key it "
                "was encrypted with."
            ) from exc


class CaseSensitiveCharField(models.CharField):
    """A CharField that compares by exact bytes on every backend (for identifiers that are case-sensitive elsewhere,
    such as Binance's client order ids).

    MySQL/MariaDB get a binary collation (`utf8mb4_bin`): the connection's default (utf8mb4_unicode_ci) would make
    `abc-1` and `ABC-1` equal, in lookups and in unique constraints. SQLite compares text byte by byte already
    (its BINARY collation), and would reject a MySQL collation name, so nothing is added there. Not `db_collation`
    on a plain CharField: that name would be sent to every backend.
    """

    MYSQL_COLLATION = "utf8mb4_bin"

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        # CharField.__init__ sets db_collation; django-stubs declare it as an argument only.
        if connection.vendor == "mysql" and not self.db_collation:  # type: ignore[attr-defined]  # see above
            params["collation"] = self.MYSQL_COLLATION
        return params
