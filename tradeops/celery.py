"""The Celery app. Configuration lives in settings (CELERY_* names); tasks are autodiscovered from installed apps."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeops.settings")

app = Celery("tradeops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
