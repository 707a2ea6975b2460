"""The desk's pages, mounted under /admin/desk/ (tradeops/urls.py) and wrapped by the admin site's login."""

from django.contrib import admin
from django.urls import path

from . import views

app_name = "desk"

urlpatterns = [
    path("exposure/<int:account_id>/", admin.site.admin_view(views.exposure), name="exposure"),
    path("exposure/<int:account_id>/sync/", admin.site.admin_view(views.sync_now), name="exposure_sync"),
]
