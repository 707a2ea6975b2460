"""Accounts, trades and the audit trail.

A trade's state only changes through `TradeQuerySet.compare_and_set`: one `UPDATE … WHERE status=<expected>` plus one
TradeEvent in the same transaction. The contract methods (`update_pending_to_filled`,
`update_pending_by_entry_order_id`) and the reconciliation rule all go through it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypedDict

from django.core.validators import RegexValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from .db import retry_transient_db_errors
from .fields import CaseSensitiveCharField, EncryptedTextField

logger = logging.getLogger(__name__)

# Binance: newClientOrderId must match ^[\.A-Z\:/a-z0-9_-]{1,36}$
CLIENT_ORDER_ID_MAX_LENGTH = 36
client_order_id_validator = RegexValidator(
    r"^[\.A-Z\:/a-z0-9_-]{1,36}$", "Binance allows 1-36 characters of letters, digits and . : / _ -"
)


class DecimalSize(TypedDict):
    """DecimalField's size arguments, typed so that `DecimalField(**MONEY)` is checked."""

    max_digits: int
    decimal_places: int


MONEY: DecimalSize = {"max_digits": 28, "decimal_places": 10}  # DECIMAL(28,10): 1e-8 steps and prices to 10^17


class Account(models.Model):
    name = models.CharField(max_length=64, unique=True)
    api_key = models.CharField(max_length=128)
    api_secret = EncryptedTextField(help_text="Encrypted at rest with FIELD_ENCRYPTION_KEY; never shown.")
    is_active = models.BooleanField(default=True)
    use_testnet = models.BooleanField(default=False, help_text="Talk to Binance's futures testnet URLs.")
    # Learned from Binance (GET /fapi/v1/positionSide/dual), never typed in: the admin shows it read-only.
    dual_side_position = models.BooleanField(
        null=True,
        blank=True,
        editable=False,
        help_text="Hedge mode on Binance (LONG and SHORT positions per symbol); empty until first read.",
    )
    position_mode_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # never include the keys
        return f"<Account {self.pk} {self.name!r}>"


# Money as callers hand it in: a Decimal, an int or Binance's decimal string (a float is refused at run time).
MoneyIn = Decimal | int | str


def _exact_decimal(value: MoneyIn | float, name: str) -> Decimal:
    """Money arrives as a Decimal, an int or Binance's decimal string; a float is already rounded, so it is refused."""
    if isinstance(value, float):
        raise TypeError(f"{name} must be a Decimal or a decimal string, not a float ({value!r})")
    return Decimal(value)


class TradeQuerySet(models.QuerySet):
    def pending(self) -> TradeQuerySet:
        return self.filter(status=Trade.Status.PENDING)

    def get_pending_recent(
        self, account_id: int, limit: int = 50, max_age_sec: float = 86400, *, before: Trade | None = None
    ) -> list[Trade]:
        """Pending trades of one account created within max_age_sec, newest first, at most `limit`.

        `before` (a trade from the previous page) continues after it, so a caller can page through all of them.
        """
        since = timezone.now() - timedelta(seconds=max_age_sec)
        query = self.filter(account_id=account_id, status=Trade.Status.PENDING, created_at__gte=since)
        if before is not None:
            query = query.filter(
                Q(created_at__lt=before.created_at) | Q(created_at=before.created_at, pk__lt=before.pk)
            )
        return list(query.order_by("-created_at", "-pk")[:limit])

    def compare_and_set(
        self,
        lookup: dict[str, Any],
        *,
        expected_status: str,
        changes: dict[str, Any],
        source: str,
        condition: Q | None = None,
        payload: dict[str, Any] | None = None,
        actor: str = "",
    ) -> Trade | None:
        """Apply `changes` to the one trade matching `lookup` if it is still in `expected_status` (and `condition`).

        One UPDATE and, when it changed the row, one TradeEvent, in one transaction. Returns the updated trade, or
        None when the row was not in the expected state (someone else got there first, or nothing to do).
        """
        now = timezone.now()
        filters = Q(**lookup) & Q(status=expected_status)
        if condition is not None:
            filters &= condition
        with transaction.atomic():
            if self.filter(filters).update(**changes, updated_at=now) != 1:
                return None
            trade = self.get(**lookup)
            TradeEvent.objects.create(
                trade=trade,
                created_at=now,
                source=source,
                from_status=expected_status,
                to_status=trade.status,
                filled_qty=trade.filled_qty,
                payload=payload or {},
                actor=actor,
            )
        return trade

    def _fill_pending(
        self,
        lookup: dict[str, Any],
        *,
        order_id: int | None,
        filled_qty: MoneyIn,
        avg_price: MoneyIn,
        source: str,
        log_ref: str,
    ) -> bool:
        filled_qty, avg_price = _exact_decimal(filled_qty, "filled_qty"), _exact_decimal(avg_price, "avg_price")
        changes = {
            "status": Trade.Status.OPEN,
            "filled_qty": filled_qty,
            "entry_price": avg_price,
            "exchange_status": "FILLED",
            "opened_at": timezone.now(),
        }
        if order_id is not None:
            changes["entry_order_id"] = order_id
        payload = {"order_id": order_id, "filled_qty": str(filled_qty), "avg_price": str(avg_price)}
        try:
            trade = retry_transient_db_errors(self.compare_and_set)(
                lookup, expected_status=Trade.Status.PENDING, changes=changes, source=source, payload=payload
            )
        except Exception:
            logger.exception("trade fill failed: account=%s %s source=%s", lookup.get("account_id"), log_ref, source)
            raise
        if trade is None:
            logger.info(
                "trade fill no-op (not pending): account=%s %s source=%s", lookup["account_id"], log_ref, source
            )
            return False
        logger.info(
            "trade filled: account=%s %s source=%s trade=%s qty=%s avg_price=%s",
            lookup["account_id"],
            log_ref,
            source,
            trade.pk,
            filled_qty,
            avg_price,
        )
        return True

    def update_pending_to_filled(
        self,
        account_id: int,
        client_order_id: str,
        *,
        order_id: int | None,
        filled_qty: MoneyIn,
        avg_price: MoneyIn,
        source: str,
    ) -> bool:
        """pending → open for the trade with this client order id. True only for the call that made the change."""
        return self._fill_pending(
            {"account_id": account_id, "client_order_id": client_order_id},
            order_id=order_id,
            filled_qty=filled_qty,
            avg_price=avg_price,
            source=source,
            log_ref=f"client_order_id={client_order_id}",
        )

    def update_pending_by_entry_order_id(
        self, account_id: int, entry_order_id: int, *, filled_qty: MoneyIn, avg_price: MoneyIn, source: str
    ) -> bool:
        """pending → open for the trade with this Binance order id. True only for the call that made the change.

        Binance order ids are unique per symbol, not per account: if two pending trades of the account carry the
        same id the fill is not guessed onto either; it is logged and left to a reconcile (which knows the symbol).
        """
        log_ref = f"entry_order_id={entry_order_id}"
        candidates = list(
            self.filter(account_id=account_id, entry_order_id=entry_order_id, status=Trade.Status.PENDING).values_list(
                "pk", flat=True
            )[:2]
        )
        if len(candidates) > 1:
            logger.error(
                "trade fill refused: account=%s %s source=%s matches several pending trades",
                account_id,
                log_ref,
                source,
            )
            return False
        if not candidates:
            logger.info("trade fill no-op (no pending trade): account=%s %s source=%s", account_id, log_ref, source)
            return False
        return self._fill_pending(
            {"pk": candidates[0], "account_id": account_id},
            order_id=None,
            filled_qty=filled_qty,
            avg_price=avg_price,
            source=source,
            log_ref=log_ref,
        )


class Trade(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        OPEN = "open", "open"
        CLOSED = "closed", "closed"
        CANCELLED = "cancelled", "cancelled"
        FAILED = "failed", "failed"

    class Side(models.TextChoices):
        BUY = "BUY", "BUY"
        SELL = "SELL", "SELL"

    class PositionSide(models.TextChoices):
        BOTH = "BOTH", "BOTH (one-way mode)"
        LONG = "LONG", "LONG (hedge mode)"
        SHORT = "SHORT", "SHORT (hedge mode)"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="trades")
    symbol = models.CharField(max_length=32)
    side = models.CharField(max_length=4, choices=Side.choices)
    position_side = models.CharField(
        max_length=5,
        choices=PositionSide.choices,
        default=PositionSide.BOTH,
        help_text="Binance's positionSide of the entry: BOTH in one-way mode, LONG / SHORT in hedge mode.",
    )
    quantity = models.DecimalField(**MONEY)
    price = models.DecimalField(**MONEY, null=True, blank=True, help_text="Limit price; empty for market orders.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_reason = models.CharField(max_length=255, blank=True, default="")
    # Case-sensitive in the database too (a binary collation on MySQL): Binance tells `abc-1` from `ABC-1`.
    client_order_id = CaseSensitiveCharField(
        max_length=CLIENT_ORDER_ID_MAX_LENGTH, null=True, blank=True, validators=[client_order_id_validator]
    )
    entry_order_id = models.BigIntegerField(null=True, blank=True, help_text="Binance orderId of the entry order.")
    filled_qty = models.DecimalField(**MONEY, default=Decimal("0"))
    entry_price = models.DecimalField(**MONEY, null=True, blank=True, help_text="Average fill price.")
    exchange_status = models.CharField(max_length=24, blank=True, default="", help_text="Last Binance status seen.")
    exchange_update_time = models.BigIntegerField(
        null=True, blank=True, help_text="Binance updateTime (ms) of the last snapshot applied."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    placed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the entry order was sent to Binance (the not-found grace runs from it)."
    )
    cancel_after = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The entry's deadline (the database's clock): a pending trade still pending after it is cancelled "
        "and verified by the deadline sweep, whatever happened to its countdown message.",
    )
    cancel_sent_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the deadline's cancel was last sent (by the countdown or the sweep, whichever claimed it).",
    )
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    exit_price = models.DecimalField(**MONEY, null=True, blank=True, help_text="Average closing price, if known.")
    realized_pnl = models.DecimalField(**MONEY, null=True, blank=True, help_text="From Binance's userTrades.")
    closed_qty = models.DecimalField(
        **MONEY, default=Decimal("0"), help_text="Closed by exits so far; the open quantity is filled − closed."
    )
    exit_fill_id = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Binance userTrades id of the last exit fill applied (fills are applied once, in id order).",
    )
    position_gone_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="First position read that found no position for the trade; a second read confirms the close.",
    )
    needs_operator = models.BooleanField(
        default=False, help_text="Reconciliation could not decide this trade on its own; see its events."
    )
    # Binance can answer -2013 for minutes for an order that exists: a trade failed as "not found on exchange" is
    # looked up again on NOT_FOUND_RECHECK_SEC's schedule (reconciliation.orders.rechecks), at most once per entry.
    not_found_rechecks = models.PositiveSmallIntegerField(
        default=0, help_text="Look-ups made since the trade was failed as not found on exchange."
    )
    not_found_recheck_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a trade failed as not found on exchange is looked up again; empty: never again.",
    )

    objects = TradeQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # Admin actions that change trades, run an account's reconcile or resolve orphans need this;
        # observers get view permissions only.
        permissions = [("fix_trade", "Can fix trades (admin actions: verify, cancel, mark, reconcile, orphans)")]
        constraints = [
            models.UniqueConstraint(fields=["account", "client_order_id"], name="trade_unique_client_order_id"),
        ]
        indexes = [
            # get_pending_recent: account + status, newest first.
            models.Index(fields=["account", "status", "created_at"], name="trade_account_status_created"),
            # WebSocket events and update_pending_by_entry_order_id look trades up by Binance order id.
            models.Index(fields=["account", "entry_order_id"], name="trade_account_entry_order"),
            # The deadline sweep: pending (or failed "not found") trades, not yet sent, whose deadline has passed.
            models.Index(fields=["status", "cancel_sent_at", "cancel_after"], name="trade_deadline_sweep"),
            # The pending reconcile's due not-found re-checks (reconciliation.orders.rechecks).
            models.Index(fields=["account", "not_found_recheck_at"], name="trade_account_nf_recheck"),
        ]

    @property
    def open_qty(self) -> Decimal:
        return self.filled_qty - self.closed_qty

    @property
    def exposure(self) -> Decimal:
        """Signed open quantity: what the trade adds to its (symbol, position side) on Binance."""
        return self.open_qty if self.side == Trade.Side.BUY else -self.open_qty

    def __str__(self) -> str:
        qty = format(self.quantity.normalize(), "f") if isinstance(self.quantity, Decimal) else self.quantity
        return f"{self.symbol} {self.side} {qty} [{self.status}] {self.client_order_id or self.entry_order_id}"


class TradeEvent(models.Model):
    """One audit row per state change: who (source, actor) changed what (from → to) and on what evidence (payload)."""

    class Source(models.TextChoices):
        WS = "ws", "WebSocket"
        REST_WAIT = "rest_wait", "REST wait"
        RECONCILE = "reconcile", "reconcile"
        PLACE = "place", "placement answer"
        CANCEL = "cancel", "cancel answer"
        CANCEL_VERIFY = "cancel_verify", "post-cancel verification"
        POSITION_SYNC = "position_sync", "position sync"
        ADMIN = "admin", "admin"
        BOT = "bot", "bot"

    trade = models.ForeignKey(Trade, on_delete=models.PROTECT, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=32)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    filled_qty = models.DecimalField(**MONEY, null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150, blank=True, default="", help_text="Admin user, when a person acted.")

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["trade", "created_at"], name="tradeevent_trade_created")]

    def __str__(self) -> str:
        return f"{self.trade_id}: {self.from_status} → {self.to_status} ({self.source})"
