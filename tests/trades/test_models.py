import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from tests.factories import AccountFactory, TradeFactory
from trades.models import Account, Trade, TradeEvent

pytestmark = pytest.mark.django_db


def fill(trade, source="ws", **overrides):
    kwargs = {"order_id": 1001, "filled_qty": "0.010", "avg_price": "67123.45", "source": source, **overrides}
    return Trade.objects.update_pending_to_filled(trade.account_id, trade.client_order_id, **kwargs)


class TestGetPendingRecent:
    def test_only_pending_of_that_account_inside_max_age_newest_first_at_most_limit(self):
        account, other = AccountFactory(), AccountFactory()
        now = timezone.now()
        newest = TradeFactory(account=account, created_at=now - timedelta(seconds=10))
        middle = TradeFactory(account=account, created_at=now - timedelta(seconds=20))
        oldest_inside = TradeFactory(account=account, created_at=now - timedelta(seconds=30))
        TradeFactory(account=account, created_at=now - timedelta(hours=2))  # too old
        TradeFactory(account=account, status=Trade.Status.OPEN, created_at=now)  # not pending
        TradeFactory(account=account, status=Trade.Status.CANCELLED, created_at=now)
        TradeFactory(account=other, created_at=now)  # another account

        assert Trade.objects.get_pending_recent(account.pk, limit=50, max_age_sec=3600) == [
            newest,
            middle,
            oldest_inside,
        ]
        assert Trade.objects.get_pending_recent(account.pk, limit=2, max_age_sec=3600) == [newest, middle]
        assert Trade.objects.get_pending_recent(account.pk, limit=50, max_age_sec=15) == [newest]

    def test_defaults_cover_a_day(self):
        trade = TradeFactory(created_at=timezone.now() - timedelta(hours=23))
        TradeFactory(account=trade.account, created_at=timezone.now() - timedelta(hours=25))
        assert Trade.objects.get_pending_recent(trade.account_id) == [trade]


class TestUpdatePendingToFilled:
    def test_first_call_changes_and_audits_once_repeat_is_a_noop(self):
        trade = TradeFactory()

        assert fill(trade) is True
        assert fill(trade) is False
        assert fill(trade, source="rest_wait") is False

        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN
        assert trade.entry_order_id == 1001
        assert trade.filled_qty == Decimal("0.010")
        assert trade.entry_price == Decimal("67123.45")
        assert trade.opened_at is not None
        [event] = TradeEvent.objects.filter(trade=trade)
        assert (event.source, event.from_status, event.to_status) == ("ws", "pending", "open")
        assert event.filled_qty == Decimal("0.010")
        assert event.payload == {"order_id": 1001, "filled_qty": "0.010", "avg_price": "67123.45"}

    @pytest.mark.parametrize("status", ["open", "closed", "cancelled", "failed"])
    def test_never_touches_a_trade_that_is_not_pending(self, status):
        trade = TradeFactory(status=status, filled_qty=Decimal("0.005"))

        assert fill(trade) is False

        trade.refresh_from_db()
        assert trade.status == status
        assert trade.filled_qty == Decimal("0.005")
        assert not TradeEvent.objects.filter(trade=trade).exists()

    def test_same_client_order_id_in_another_account_is_left_alone(self):
        trade = TradeFactory()
        twin = TradeFactory(client_order_id=trade.client_order_id)

        assert fill(trade) is True

        twin.refresh_from_db()
        assert twin.status == Trade.Status.PENDING
        assert not TradeEvent.objects.filter(trade=twin).exists()

    def test_unknown_client_order_id_is_false(self):
        account = AccountFactory()
        assert (
            Trade.objects.update_pending_to_filled(
                account.pk, "nobody", order_id=1, filled_qty="1", avg_price="1", source="ws"
            )
            is False
        )
        assert not TradeEvent.objects.exists()

    @pytest.mark.parametrize("field", ["filled_qty", "avg_price"])
    def test_a_float_is_refused_money_is_never_rounded_on_the_way_in(self, field):
        trade = TradeFactory()
        with pytest.raises(TypeError, match="not a float"):
            fill(trade, **{field: 0.1})
        trade.refresh_from_db()
        assert trade.status == Trade.Status.PENDING and not TradeEvent.objects.exists()


class TestUpdatePendingByEntryOrderId:
    def test_first_call_changes_and_audits_once_repeat_is_a_noop(self):
        trade = TradeFactory(entry_order_id=555)
        kwargs = {"filled_qty": "0.010", "avg_price": "100.5", "source": "reconcile"}

        assert Trade.objects.update_pending_by_entry_order_id(trade.account_id, 555, **kwargs) is True
        assert Trade.objects.update_pending_by_entry_order_id(trade.account_id, 555, **kwargs) is False

        trade.refresh_from_db()
        assert (trade.status, trade.filled_qty, trade.entry_price) == ("open", Decimal("0.010"), Decimal("100.5"))
        assert TradeEvent.objects.filter(trade=trade).count() == 1

    def test_never_touches_a_trade_that_is_not_pending(self):
        trade = TradeFactory(entry_order_id=556, status=Trade.Status.CANCELLED)
        assert (
            Trade.objects.update_pending_by_entry_order_id(
                trade.account_id, 556, filled_qty="1", avg_price="1", source="ws"
            )
            is False
        )
        trade.refresh_from_db()
        assert trade.status == Trade.Status.CANCELLED
        assert not TradeEvent.objects.exists()

    def test_ambiguous_order_id_is_not_guessed(self, caplog):
        # Binance order ids are unique per symbol only: two pending trades may share one.
        first = TradeFactory(entry_order_id=777, symbol="BTCUSDT")
        second = TradeFactory(account=first.account, entry_order_id=777, symbol="ETHUSDT")

        assert (
            Trade.objects.update_pending_by_entry_order_id(
                first.account_id, 777, filled_qty="1", avg_price="1", source="ws"
            )
            is False
        )

        assert set(Trade.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {"pending"}
        assert "matches several pending trades" in caplog.text


class TestTransientDbErrors:
    """A real django.db.OperationalError carrying MySQL's error number, raised by a connection execute wrapper."""

    def _failing_update(self, code, times):
        calls = {"raised": 0}

        def wrapper(execute, sql, params, many, context):
            if sql.lstrip().upper().startswith("UPDATE") and "trades_trade" in sql and calls["raised"] < times:
                calls["raised"] += 1
                raise OperationalError(code, "injected by the test")
            return execute(sql, params, many, context)

        return wrapper, calls

    @pytest.mark.django_db(transaction=True)
    @pytest.mark.parametrize("code", [1213, 1205, 2006, 2013])
    def test_transient_error_once_then_success(self, code):
        trade = TradeFactory()
        wrapper, calls = self._failing_update(code, times=1)

        with connection.execute_wrapper(wrapper):
            assert fill(trade) is True

        assert calls["raised"] == 1
        trade.refresh_from_db()
        assert trade.status == Trade.Status.OPEN
        assert TradeEvent.objects.filter(trade=trade).count() == 1

    @pytest.mark.django_db(transaction=True)
    def test_transient_error_every_time_propagates_after_bounded_tries(self):
        trade = TradeFactory()
        wrapper, calls = self._failing_update(1213, times=100)

        with connection.execute_wrapper(wrapper), pytest.raises(OperationalError):
            fill(trade)

        assert calls["raised"] == 3
        trade.refresh_from_db()
        assert trade.status == Trade.Status.PENDING
        assert not TradeEvent.objects.exists()

    @pytest.mark.django_db(transaction=True)
    def test_non_transient_error_propagates_at_once(self):
        trade = TradeFactory()
        wrapper, calls = self._failing_update(1146, times=100)  # ER_NO_SUCH_TABLE

        with connection.execute_wrapper(wrapper), pytest.raises(OperationalError):
            fill(trade)

        assert calls["raised"] == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_fills_race_exactly_one_wins(mysql_only):
    """Two threads, each with its own connection, race the same compare-and-set on MariaDB."""
    trade = TradeFactory()
    barrier = threading.Barrier(2)
    results, errors = [], []

    def racer(source):
        try:
            barrier.wait(timeout=10)
            results.append(fill(trade, source=source))
        except Exception as exc:  # noqa: BLE001 — surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=racer, args=(src,)) for src in ("ws", "rest_wait")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert sorted(results) == [False, True]
    assert TradeEvent.objects.filter(trade=trade).count() == 1


class TestDecimals:
    @pytest.mark.parametrize(
        "quantity,price",
        # SQLite keeps decimals as REAL (15 significant digits); these stay inside that on both databases.
        [("0.001", "67123.45"), ("0.00000001", "0.00000001"), ("1000000.12345678", "0.00012345")],
    )
    def test_round_trip_exact(self, quantity, price):
        trade = TradeFactory(quantity=Decimal(quantity), price=Decimal(price))
        assert fill(trade, filled_qty=quantity, avg_price=price) is True

        trade = Trade.objects.get(pk=trade.pk)
        assert trade.quantity == Decimal(quantity)
        assert trade.price == Decimal(price)
        assert trade.filled_qty == Decimal(quantity)
        assert trade.entry_price == Decimal(price)
        assert isinstance(trade.filled_qty, Decimal)

    def test_full_precision_on_mysql(self, mysql_only):
        self.test_round_trip_exact("123456789.12345678", "99999999.99999999")


class TestAccountSecret:
    def test_raw_column_holds_no_plaintext_and_model_reads_plaintext(self):
        secret = "S3cr3t-plaintext-value-0123456789abcdef"
        account = Account.objects.create(name="a", api_key="key", api_secret=secret)

        with connection.cursor() as cursor:
            cursor.execute("SELECT api_secret FROM trades_account WHERE id = %s", [account.pk])
            [raw] = cursor.fetchone()
        assert secret not in raw
        assert raw.startswith("gAAAAA")  # a Fernet token
        assert Account.objects.get(pk=account.pk).api_secret == secret

    def test_repr_and_str_carry_no_key(self):
        account = AccountFactory(name="desk-1")
        assert account.api_key not in repr(account) + str(account)
        assert account.api_secret not in repr(account) + str(account)


class TestClientOrderId:
    def test_unique_per_account_only(self):
        from django.db import IntegrityError, transaction

        trade = TradeFactory()
        TradeFactory(client_order_id=trade.client_order_id)  # another account: fine
        with pytest.raises(IntegrityError), transaction.atomic():
            TradeFactory(account=trade.account, client_order_id=trade.client_order_id)

    @pytest.mark.parametrize(
        "value,ok",
        [("abc.DEF:/_-09", True), ("x" * 36, True), ("x" * 37, False), ("has space", False), ("ünïcode", False)],
    )
    def test_binance_charset(self, value, ok):
        from django.core.exceptions import ValidationError

        trade = TradeFactory.build(account=AccountFactory(), client_order_id=value)
        if ok:
            trade.full_clean()
        else:
            with pytest.raises(ValidationError):
                trade.full_clean()


@pytest.mark.parametrize(
    "query,index",
    [
        (
            lambda account: Trade.objects.filter(
                account=account, status="pending", created_at__gte=timezone.now() - timedelta(days=1)
            ).order_by("-created_at", "-pk")[:50],
            "trade_account_status_created",
        ),
        (lambda account: Trade.objects.filter(account=account, entry_order_id=123), "trade_account_entry_order"),
    ],
    ids=["get_pending_recent", "by_entry_order_id"],
)
@pytest.mark.django_db(transaction=True)  # ANALYZE TABLE commits implicitly: a rolled-back test would leak its rows
def test_lookups_use_their_index_on_mariadb(mysql_only, query, index):
    account = AccountFactory()
    other = AccountFactory()
    TradeFactory.create_batch(30, account=other, status=Trade.Status.OPEN)
    TradeFactory.create_batch(5, account=account)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE trades_trade")
    plan = query(account).explain()
    assert index in plan, plan


def test_a_query_on_a_connection_that_hangs_fails_with_2013_instead_of_hanging(mysql_only, transactional_db):
    """DATABASE_READ_TIMEOUT reaches PyMySQL: a query the server does not answer in time (here SLEEP, standing in for
    a half-open connection after a failover) fails with 2013, a transient error our retries and reconnects handle."""
    assert connection.settings_dict["OPTIONS"]["read_timeout"] == 300  # the default, in use
    params = {**connection.get_connection_params(), "read_timeout": 1}  # the same path, a shorter wait
    raw = connection.Database.connect(**params)
    try:
        with raw.cursor() as cursor, pytest.raises(connection.Database.OperationalError) as failed:
            cursor.execute("SELECT SLEEP(5)")
        assert failed.value.args[0] == 2013
    finally:
        raw.close()
