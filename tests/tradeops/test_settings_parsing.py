"""Settings parsed from the environment beyond what django-environ does itself."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from tradeops.settings import _delays


@pytest.mark.parametrize(
    "text, delays",
    [
        ("300,1800,7200,86400", (300, 1800, 7200, 86400)),
        (" 2, 4 ", (2, 4)),
        ("", ()),
        ("60,", (60,)),
    ],
)
def test_a_delay_schedule_is_comma_separated_whole_seconds(monkeypatch, text, delays):
    monkeypatch.setenv("A_SCHEDULE", text)

    assert _delays("A_SCHEDULE", "1") == delays


@pytest.mark.parametrize("text", ["5m", "1.5", "0", "-3", "300;1800"])
def test_a_bad_delay_schedule_refuses_to_start(monkeypatch, text):
    monkeypatch.setenv("A_SCHEDULE", text)

    with pytest.raises(ImproperlyConfigured):
        _delays("A_SCHEDULE", "1")


def test_an_unset_schedule_is_the_default():
    assert _delays("NO_SUCH_SCHEDULE_IN_THE_ENVIRONMENT", "300,1800") == (300, 1800)
