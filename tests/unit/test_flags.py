"""flags.env_number: the numbers the exporter takes from its environment."""

from __future__ import annotations

import pytest

from ingress_ipvs_exporter.flags import env_number

NAME = "INGRESS_IPVS_EXPORTER_TEST_NUMBER"


@pytest.mark.parametrize(
    "raw, whole, expected",
    [
        (None, False, 60.0),  # unset: the default
        ("", False, 60.0),
        ("  ", True, 60.0),  # blank, as an EnvironmentFile's "NAME=" leaves it
        ("0", True, 0.0),
        ("32", True, 32.0),
        (" 2 ", True, 2.0),
        ("2.5", False, 2.5),
        ("0.05", False, 0.05),
    ],
)
def test_a_number_or_the_default(monkeypatch, raw, whole, expected):
    if raw is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, raw)
    assert env_number(NAME, 60.0, "seconds", whole=whole) == expected


@pytest.mark.parametrize(
    "raw, whole",
    [
        ("lots", False),
        ("-1", False),  # no sign: a negative time or size is no setting
        ("+1", False),
        ("1e3", False),
        ("inf", False),
        ("nan", False),
        ("1_000", False),  # Python's float() would take it
        ("60s", False),
        ("2.5", True),  # not a whole number
        ("٣", True),  # a digit, but not an ASCII one
    ],
)
def test_anything_else_is_an_error_naming_the_variable(monkeypatch, raw, whole):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ValueError) as err:
        env_number(NAME, 8, "MB", whole=whole)
    message = str(err.value)
    assert message.startswith(f"{NAME}={raw!r} is not a ") and "of MB" in message and "\n" not in message
    assert ("whole number" in message) == whole
