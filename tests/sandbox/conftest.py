"""Fixtures for the sandbox's own tests: python-binance clients bound to fresh sandbox accounts."""

from __future__ import annotations

import pytest

from .helpers import binance_client


def pytest_configure(config):
    # tests/conftest.py may load the plugin already (pytest_plugins = ["sandbox.pytest_plugin"]).
    if not config.pluginmanager.has_plugin("sandbox.pytest_plugin"):
        config.pluginmanager.import_plugin("sandbox.pytest_plugin")


@pytest.fixture
def account(exchange):
    return exchange.control.create_account()


@pytest.fixture
def futures_client(exchange, account):
    return binance_client(exchange, account)
