"""{% load desk %}: the desk's formatting as template filters, and the home page's panels."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString

from desk import format as fmt

register = template.Library()


@register.filter
def money(value: Any) -> str:
    return fmt.money(value)


@register.filter
def signed_money(value: Any) -> str:
    return fmt.signed_money(value)


@register.filter
def exchange_time(ms: Any) -> SafeString | str:
    return fmt.exchange_time(ms)


@register.filter
def local_time(moment: Any) -> str:
    return fmt.local_time(moment)


@register.filter
def badge(state: Any, label: str | None = None) -> SafeString:
    return fmt.badge(str(state or ""), label)


@register.inclusion_tag("desk/home_panels.html", takes_context=True)
def desk_home_panels(context: template.Context) -> dict[str, Any]:
    """The home page's numbers, for users who may see trades (observers included); nothing for the others."""
    from desk.home import home_panels

    request = context.get("request")
    if request is None or not request.user.has_perm("trades.view_trade"):
        return {"show": False}
    return {"show": True, **home_panels()}
