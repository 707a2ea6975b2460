"""ALERT_URLS: Apprise URLs separated by commas or spaces."""

import pytest

from tradeops.settings import _urls


@pytest.mark.parametrize(
    "text, urls",
    [
        ("", []),
        ("json://127.0.0.1:9/", ["json://127.0.0.1:9/"]),
        ("tgram://t/c, mailtos://u:p@h?to=a@b.c", ["tgram://t/c", "mailtos://u:p@h?to=a@b.c"]),
        (" json://a/  json://b/\n", ["json://a/", "json://b/"]),
    ],
)
def test_alert_urls_are_comma_or_space_separated(monkeypatch, text, urls):
    monkeypatch.setenv("SOME_URLS", text)
    assert _urls("SOME_URLS") == urls
