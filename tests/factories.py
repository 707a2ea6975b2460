import uuid
from decimal import Decimal

import factory

from trades.models import Account, Trade, TradeEvent


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    name = factory.Sequence(lambda n: f"account-{n}")
    api_key = factory.LazyFunction(lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    api_secret = factory.LazyFunction(lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    is_active = True


def new_client_order_id() -> str:
    return f"to-{uuid.uuid4().hex[:30]}"


class TradeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Trade

    account = factory.SubFactory(AccountFactory)
    symbol = "BTCUSDT"
    side = Trade.Side.BUY
    quantity = Decimal("0.010")
    price = Decimal("67000.00")
    status = Trade.Status.PENDING
    client_order_id = factory.LazyFunction(new_client_order_id)


class TradeEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TradeEvent

    trade = factory.SubFactory(TradeFactory)
    source = TradeEvent.Source.BOT
    from_status = ""
    to_status = Trade.Status.PENDING
