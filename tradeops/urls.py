from django.contrib import admin
from django.urls import include, path

from reconciliation.health import views

admin.site.site_header = "tradeops — operators' desk"
admin.site.site_title = "tradeops"
admin.site.index_title = "Trades, accounts and reconciliation"

urlpatterns = [
    path("admin/desk/", include("desk.urls")),  # the exposure page, inside the admin
    path("admin/", admin.site.urls),
    path("health/", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
]
