"""Settings, read from the environment (see the README's configuration table).

With no environment at all everything runs on one machine with no external server: SQLite under var/, kombu's
filesystem transport as the Celery broker, and Binance's production URLs (point them at `python -m sandbox` for
local work; `make run` does). DEBUG is off unless DJANGO_DEBUG asks for it.
"""

import sys
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from reconciliation.stream.events import DEFAULT_EVENTS

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("TRADEOPS_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _dev_secret(filename: str, make, what: str) -> str:
    """Return a development-only secret kept under var/, creating it on first use (DEBUG only)."""
    path = VAR_DIR / filename
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
        print(f"WARNING: {what} is not set; generated a development key in {path} (DEBUG only).", file=sys.stderr)
    return path.read_text().strip()


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
    SECRET_KEY = _dev_secret("dev-secret-key", lambda: Fernet.generate_key().decode(), "DJANGO_SECRET_KEY")

# Fernet key(s) for secrets at rest (Account.api_secret). Comma-separated: the first encrypts, all decrypt, so a key
# can be rotated by prepending the new one and re-saving the accounts.
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="")
if not FIELD_ENCRYPTION_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must be set when DJANGO_DEBUG is off (it encrypts the accounts' API secrets). "
            "Make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    FIELD_ENCRYPTION_KEY = _dev_secret(
        "dev-field-encryption-key", lambda: Fernet.generate_key().decode(), "FIELD_ENCRYPTION_KEY"
    )

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "desk",  # before the admin: its templates override the admin's home page
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "trades",
    "reconciliation",
    "alerts",
]
if DEBUG:  # development only (`make run`): the dev admin and the demo story's commands (demo/); never in production
    INSTALLED_APPS.append("demo")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "desk.timezone.OperatorTimeZoneMiddleware",  # the admin's times in the operator's (browser's) zone
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tradeops.urls"
WSGI_APPLICATION = "tradeops.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------------------------
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'tradeops.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    _db.setdefault("OPTIONS", {}).update(
        {
            "charset": "utf8mb4",
            # READ COMMITTED: a compare-and-set UPDATE sees the latest committed row, and gap locks (a deadlock
            # source under REPEATABLE READ) are not taken.
            "isolation_level": "read committed",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES', innodb_lock_wait_timeout="
            + str(env.int("DATABASE_LOCK_WAIT_TIMEOUT", default=10)),
            # A query on a connection the server (or a failover) left half-open fails with 2013 after this instead
            # of hanging its thread for ever (the user stream's threads above all). 0: no limit (long migrations).
            "connect_timeout": 10,
        }
    )
    if env.int("DATABASE_READ_TIMEOUT", default=300):
        _db["OPTIONS"]["read_timeout"] = _db["OPTIONS"]["write_timeout"] = env.int("DATABASE_READ_TIMEOUT", default=300)
    _db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    _db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # WAL + IMMEDIATE transactions: worker, beat and the stream share one file without "database is locked" surprises.
    _db.setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# --- Security (production: HTTPS behind a proxy; see README "Production") ---------------------------------------------
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("DJANGO_BEHIND_TLS_PROXY", False) else None
X_FRAME_OPTIONS = "DENY"

# --- Binance ----------------------------------------------------------------------------------------------------------
BINANCE_FUTURES_REST_URL = env.str("BINANCE_FUTURES_REST_URL", default="https://fapi.binance.com").rstrip("/")
BINANCE_FUTURES_WS_URL = env.str("BINANCE_FUTURES_WS_URL", default="wss://fstream.binance.com").rstrip("/")
BINANCE_FUTURES_TESTNET_REST_URL = env.str(
    "BINANCE_FUTURES_TESTNET_REST_URL", default="https://testnet.binancefuture.com"
).rstrip("/")
BINANCE_FUTURES_TESTNET_WS_URL = env.str(
    "BINANCE_FUTURES_TESTNET_WS_URL", default="wss://stream.binancefuture.com"
).rstrip("/")
BINANCE_HTTP_TIMEOUT = env.float("BINANCE_HTTP_TIMEOUT", default=10.0)
BINANCE_RECV_WINDOW = env.int("BINANCE_RECV_WINDOW", default=5000)
# Request weight is limited per IP by Binance; trades/egress.py keeps one budget per egress IP for the whole fleet.
# Local addresses to send Binance traffic from (accounts spread over them by id, each its own budget); empty: the
# default route.
BINANCE_SOURCE_ADDRESSES = env.list("BINANCE_SOURCE_ADDRESSES", default=[])
# Where the budget lives: empty → the Celery broker when it is Redis, else an SQLite file under var/.
BINANCE_BUDGET_URL = env.str("BINANCE_BUDGET_URL", default="")
BINANCE_BUDGET_PREFIX = env.str("BINANCE_BUDGET_PREFIX", default="tradeops:egress")  # Redis key prefix
# REQUEST_WEIGHT per minute per IP; empty → exchangeInfo's rateLimits (cached an hour), 2,400 until known.
BINANCE_WEIGHT_LIMIT = env.int("BINANCE_WEIGHT_LIMIT", default=None)

# --- Reconciliation ---------------------------------------------------------------------------------------------------
SYNC_RECOVER_MISSING_POSITIONS = env.bool("SYNC_RECOVER_MISSING_POSITIONS", default=False)
PENDING_NOT_FOUND_GRACE_SEC = env.int("PENDING_NOT_FOUND_GRACE_SEC", default=120)
# positionRisk can lag the matching engine: an open trade is closed only when two reads this far apart agree its
# position is gone (or closing fills in userTrades cover it).
POSITION_CONFIRM_SEC = env.float("POSITION_CONFIRM_SEC", default=5.0)
# How long the account's position mode (one-way / hedge), read from Binance, is trusted before it is read again.
POSITION_MODE_REFRESH_SEC = env.int("POSITION_MODE_REFRESH_SEC", default=3600)


def _delays(name: str, default: str) -> tuple[int, ...]:
    """A comma-separated list of positive whole seconds ("" for none)."""
    text = env.str(name, default=default).strip()
    try:
        delays = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be comma-separated whole seconds, got {text!r}") from None
    if any(delay <= 0 for delay in delays):
        raise ImproperlyConfigured(f"{name} must be positive seconds, got {text!r}")
    return delays


# A trade failed as "not found on exchange" is looked up again this long after the failure, once per entry.
NOT_FOUND_RECHECK_SEC = _delays("NOT_FOUND_RECHECK_SEC", "300,1800,7200,86400")

# --- Celery (all of it here: one module) ------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
_visibility_timeout: int | None = None  # Redis's redelivery window, seconds; the filesystem broker has none
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT = "tradeops.kombu_filesystem:Transport"  # kombu's, with atomic message files
    _queue_dir = VAR_DIR / "celery-broker"
    (_queue_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Producer and consumer share one folder; 0.05 s polling gives ~20 msg/s (measured), plenty for `make run`.
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
else:
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        # kombu's, with channels that survive a Redis restart while the worker holds unacked messages (countdowns):
        # see tradeops/kombu_redis.py for the cause in Celery/kombu.
        CELERY_BROKER_TRANSPORT = "tradeops.kombu_redis:Transport"
    # A task a worker holds unacked (running with acks_late, or a countdown/ETA waiting in its memory) goes back to
    # the queue at once on a warm shutdown. After a crash of the whole worker, Redis hands it out again once it is
    # visibility_timeout old, at the next sweep. Kombu sweeps every interval × throttle seconds (10 × 10 by default,
    # so up to 100 s late); throttle 1 makes it every CELERY_UNACKED_RESTORE_SEC. The timeout stays above the hard
    # time limit (a running task is never handed out twice); countdowns stay below it (CELERY_MAX_COUNTDOWN_SEC).
    _visibility_timeout = env.int("CELERY_VISIBILITY_TIMEOUT", default=600)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": _visibility_timeout,
        "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_SEC", default=10),
        "unacked_restore_throttle": 1,
    }
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True  # our tasks are idempotent: a crash mid-task means re-delivery, not loss
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=120)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=150)
# The longest countdown a task message of ours carries. Under Redis, countdown + the run (up to the hard time limit)
# + a margin stays inside the visibility window (else the message is handed out again while a worker still holds
# it, once per window); a longer wait (a 418 ban's Retry-After, a long entry timeout) is taken in hops of at most
# this. Never under half the window (the e2e tests' compressed clocks). None: no limit (the filesystem broker).
CELERY_MAX_COUNTDOWN_SEC = (
    max(_visibility_timeout - CELERY_TASK_TIME_LIMIT - 30, _visibility_timeout // 2, 1)
    if _visibility_timeout is not None
    else None
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Write PeriodicTask.last_run_at after every task beat sends (default: every 3 min), so /health/ and the admin see
# when the reconcile schedule last ran. About one small UPDATE a minute.
CELERY_BEAT_SYNC_EVERY = 1
CELERY_TIMEZONE = TIME_ZONE

# --- Logging ----------------------------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # python-binance logs request headers (the API key) at DEBUG: never let that through.
        "binance": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}

# --- Reconciliation tuning (rarely changed; see reconciliation/reconcile/) --------------------------------------------
RECONCILE_MAX_AGE_SEC = env.int("RECONCILE_MAX_AGE_SEC", default=86400)  # older pending trades: the hourly deep pass
RECONCILE_PAGE_SIZE = env.int("RECONCILE_PAGE_SIZE", default=1000)
RECONCILE_PER_ORDER_MAX = env.int("RECONCILE_PER_ORDER_MAX", default=5)  # above this per symbol, one allOrders (w5)
RECONCILE_WEIGHT_BUDGET = env.int("RECONCILE_WEIGHT_BUDGET", default=1920)  # stop at 80 % of Binance's 2400/min
# A healthy user stream's account: audited by the beat this often, not every minute (reconciliation/reconcile/audit.py); 0: every beat
RECONCILE_AUDIT_SEC = env.int("RECONCILE_AUDIT_SEC", default=600)
RECONCILE_RUN_RETENTION_DAYS = env.int("RECONCILE_RUN_RETENTION_DAYS", default=7)  # ReconcileRun reports kept
RECONCILE_LEASE_SEC = env.int("RECONCILE_LEASE_SEC", default=CELERY_TASK_TIME_LIMIT + 30)
CANCEL_VERIFY_MAX_TRIES = env.int("CANCEL_VERIFY_MAX_TRIES", default=5)
CANCEL_RETRY_BASE_SEC = env.float("CANCEL_RETRY_BASE_SEC", default=1.0)  # cancel / verify retry backoff base
ENTRY_TIMEOUT_SEC = env.int("ENTRY_TIMEOUT_SEC", default=60)
# Entry deadlines in the database (Trade.cancel_after), swept every 15 s by cancel_overdue_entries (README).
ENTRY_SWEEP_BATCH = env.int("ENTRY_SWEEP_BATCH", default=500)  # overdue trades sent per sweep; the next one goes on
ENTRY_CANCEL_RESEND_SEC = env.int("ENTRY_CANCEL_RESEND_SEC", default=300)  # still pending this long after: again
CANCEL_DB_RETRY_SEC = env.int("CANCEL_DB_RETRY_SEC", default=600)  # entry_timeout / cancel_order ride out DB outages
CANCEL_RESEND_MAX = env.int("CANCEL_RESEND_MAX", default=2)  # a verification finding the order working re-cancels

# --- User-data stream (reconciliation/stream/config.py documents each) ------------------------------------------------
USER_STREAM_KEEPALIVE_SEC = env.float("USER_STREAM_KEEPALIVE_SEC", default=1800)
USER_STREAM_MAX_CONNECTION_SEC = env.float("USER_STREAM_MAX_CONNECTION_SEC", default=84600)
USER_STREAM_ACCOUNT_REFRESH_SEC = env.float("USER_STREAM_ACCOUNT_REFRESH_SEC", default=30)
USER_STREAM_BACKOFF_BASE_SEC = env.float("USER_STREAM_BACKOFF_BASE_SEC", default=1.0)
USER_STREAM_BACKOFF_MAX_SEC = env.float("USER_STREAM_BACKOFF_MAX_SEC", default=60)
USER_STREAM_POSITION_DEBOUNCE_SEC = env.float("USER_STREAM_POSITION_DEBOUNCE_SEC", default=2.0)
# Stream processes share the accounts through leases on the database's clock (reconciliation/stream/shards.py).
USER_STREAM_TAKEOVER_SEC = env.float("USER_STREAM_TAKEOVER_SEC", default=30)
USER_STREAM_CONNECTS_PER_SEC = env.float("USER_STREAM_CONNECTS_PER_SEC", default=5)
# Event types the stream subscribes to (`&events=` on /private/ws; without it Binance delivers nothing): comma- or
# "/"-separated. ORDER_TRADE_UPDATE, ACCOUNT_UPDATE and listenKeyExpired are always added: the stream needs them.
# The default, DEFAULT_EVENTS, is the list in reconciliation/stream/events.py (Binance's names; no Django there).
USER_STREAM_EVENTS = env.str("USER_STREAM_EVENTS", default=",".join(DEFAULT_EVENTS))
# A REST look-up that finds an order change this much older than itself, made while the account's socket was
# connected, that the socket never delivered, is a missed event; this many within an hour mark the stream deaf.
USER_STREAM_DEAF_LAG_SEC = env.float("USER_STREAM_DEAF_LAG_SEC", default=10.0)
USER_STREAM_DEAF_AFTER = env.int("USER_STREAM_DEAF_AFTER", default=3)

# --- Health and metrics (reconciliation/health/: views.py, metrics.py) ------------------------------------------------
HEALTH_BROKER_TIMEOUT_SEC = env.float("HEALTH_BROKER_TIMEOUT_SEC", default=2.0)
HEALTH_BEAT_MAX_AGE_SEC = env.int("HEALTH_BEAT_MAX_AGE_SEC", default=0)  # 0: three intervals of the reconcile schedule
HEALTH_STREAM_GRACE_SEC = env.int("HEALTH_STREAM_GRACE_SEC", default=120)  # (re)connecting longer than this = down
# No worker ran the heartbeat task (sent every 15 s) for longer than this = down: four beats of it.
HEALTH_WORKER_MAX_AGE_SEC = env.int("HEALTH_WORKER_MAX_AGE_SEC", default=60)
METRICS_CACHE_SEC = env.float("METRICS_CACHE_SEC", default=10.0)
# Bearer token for /metrics and /health/'s details (they name every account). Empty: /metrics stays open (a
# Prometheus on a private network) and /health/ tells anonymous callers only up/down.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")


# --- Alerts (alerts/: evaluated every 15 s by beat, sent through Apprise; docs/OPERATIONS.md "Alerts") ---------------
# Apprise URLs, separated by commas or spaces (e.g. "tgram://token/chat mailtos://user:pass@host"). Empty: alerts
# are recorded (admin → Alerts) and not sent.
def _urls(name: str) -> list[str]:
    """URLs separated by commas and/or whitespace (newlines too: an environment file may wrap them)."""
    return env.str(name, default="").replace(",", " ").split()


ALERT_URLS = _urls("ALERT_URLS")
# Scheme and host the operators reach the admin at (e.g. https://tradeops.example.com): alerts link to
# ADMIN_BASE_URL + the admin page's path. Empty: the path alone.
ADMIN_BASE_URL = env.str("ADMIN_BASE_URL", default="")
# An account whose last this-many pending reconciles all stopped early (weight budget, 429) raises an alert. 0: never.
ALERT_STOPPED_EARLY_RUNS = env.int("ALERT_STOPPED_EARLY_RUNS", default=3)
# A correction of a failed or cancelled trade (an audit event) is alerted if it is at most this old.
ALERT_CORRECTION_LOOKBACK_SEC = env.int("ALERT_CORRECTION_LOOKBACK_SEC", default=3600)
