"""The exposure page of one account: per (symbol, position side), Binance's position at the last sync, the sum of our
open trades, the difference and when Binance last confirmed it, with what resolves a difference: sync now (enqueues
the account's position sync), the trades to verify, the orphan to recover or dismiss.

Served under the admin (login, staff, the admin's look): seeing it needs the view permission on accounts and trades
(observers have it); "sync now" needs `trades.fix_trade`, like every action that changes something.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from reconciliation import tasks
from reconciliation.models import OrphanPosition
from reconciliation.positions.last_sync import ExposureRow, account_exposure, positions_read_at
from trades.models import Account, Trade
from trades.permissions import FIX_PERMISSION

VIEW_PERMISSIONS = ("trades.view_account", "trades.view_trade")
SYNC_REASON = "admin"


def _trades_url(account: Account, row: ExposureRow) -> str:
    """The trades that hold the (symbol, side): open and pending ones, where "Verify on Binance" is an action."""
    params = {
        "account__id__exact": account.pk,
        "symbol__exact": row.symbol,
        "position_side__exact": row.position_side,
        "status__in": f"{Trade.Status.OPEN},{Trade.Status.PENDING}",
    }
    return f"{reverse('admin:trades_trade_changelist')}?{urlencode(params)}"


def _orphan_url(account: Account, row: ExposureRow) -> str:
    """The open orphan of the (symbol, side) in its list, where "Recover as trade" and "Dismiss" are actions."""
    params = {
        "account__id__exact": account.pk,
        "symbol__exact": row.symbol,
        "position_side__exact": row.position_side,
        "status__exact": OrphanPosition.Status.OPEN,
    }
    return f"{reverse('admin:reconciliation_orphanposition_changelist')}?{urlencode(params)}"


def _account(request: HttpRequest, account_id: int) -> Account:
    if not request.user.has_perms(VIEW_PERMISSIONS):
        raise PermissionDenied
    return get_object_or_404(Account.objects.only("pk", "name", "is_active", "dual_side_position"), pk=account_id)


def exposure(request: HttpRequest, account_id: int) -> HttpResponse:
    account = _account(request, account_id)
    rows = account_exposure(account)
    context = {
        **admin.site.each_context(request),
        "title": f"Exposure of {account.name}",
        "account": account,
        "rows": [
            {"row": row, "trades_url": _trades_url(account, row), "orphan_url": _orphan_url(account, row)}
            for row in rows
        ],
        "differences": sum(1 for row in rows if not row.in_sync),
        "read_at": positions_read_at(account),
        "can_fix": request.user.has_perm(FIX_PERMISSION),
        "account_url": reverse("admin:trades_account_change", args=[account.pk]),
        "accounts_url": reverse("admin:trades_account_changelist"),
        "opts": Account._meta,
    }
    return TemplateResponse(request, "desk/exposure.html", context)


@require_POST
def sync_now(request: HttpRequest, account_id: int) -> HttpResponse:
    """Enqueue the account's position sync (reconciliation.tasks.sync_positions) once the request commits."""
    account = _account(request, account_id)
    if not request.user.has_perm(FIX_PERMISSION):
        raise PermissionDenied
    page = reverse("desk:exposure", args=[account.pk])
    if not account.is_active:
        messages.warning(request, f"{account.name} is not active: its positions are not synced.")
        return HttpResponseRedirect(page)
    transaction.on_commit(partial(tasks.sync_positions.delay, account.pk, reason=SYNC_REASON))
    admin.site.get_model_admin(Account).log_change(request, account, "position sync requested (exposure page)")
    messages.success(
        request,
        f"Position sync of {account.name} queued; a worker runs it under the account's lease. "
        "Reload this page in a few seconds to see Binance's new read.",
    )
    return HttpResponseRedirect(page)
