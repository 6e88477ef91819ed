import pytest

from shared.crypto import pin_as_integer


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        ("0", 0),
        ("4711", 4711),
        ("2147483647", 2147483647),
        ("2147483648", None),
        ("0042", None),
        ("-5", None),
        ("12AB", None),
        ("", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits: isdigit, not ASCII
        (" 12", None),
    ],
)
def test_only_a_canonical_int32_decimal_travels_as_an_integer(
    pin: str, expected: int | None
) -> None:
    assert pin_as_integer(pin) == expected
