import base64
import os

import pytest
from cryptography.exceptions import InvalidTag

from shared.crypto import Code, CodeVault, KeyConfigError, SealedCode, code_problem, hash_secret
from tests.helpers import fullwidth


def key_spec(*kids: str) -> str:
    return ",".join(f"{k}:{base64.b64encode(os.urandom(32)).decode()}" for k in kids)


def test_a_sealed_code_opens_with_its_sku_and_holds_no_plaintext():
    vault = CodeVault(key_spec("k1"))
    sealed = vault.seal(Code("GIFT-ABCD-1234", "0042"), aad="SKU-1")
    assert b"GIFT-ABCD-1234" not in sealed.blob
    assert "GIFT-ABCD-1234" not in sealed.to_wire()
    opened = vault.open(SealedCode.from_wire(sealed.to_wire()), aad="SKU-1")
    assert (opened.redeem_code, opened.pin_code) == ("GIFT-ABCD-1234", "0042")


def test_a_code_sealed_for_one_sku_does_not_open_for_another():
    vault = CodeVault(key_spec("k1"))
    sealed = vault.seal(Code("X", None), aad="SKU-1")
    with pytest.raises(InvalidTag):
        vault.open(sealed, aad="SKU-2")


def test_keys_rotate_old_ciphertexts_still_open():
    old = key_spec("old")
    sealed = CodeVault(old).seal(Code("R", "P"), aad="S")
    rotated = CodeVault(key_spec("new") + "," + old)
    assert rotated.open(sealed, aad="S").redeem_code == "R"
    assert rotated.seal(Code("R", "P"), aad="S").key_id == "new"


@pytest.mark.parametrize(
    "spec", ["", "k1", "k1:notbase64!", "k1:" + base64.b64encode(b"x").decode()]
)
def test_bad_key_configuration_is_refused_with_a_message(spec: str):
    with pytest.raises(KeyConfigError, match="CODE_ENCRYPTION_KEYS"):
        CodeVault(spec)


def test_codes_never_show_in_repr():
    assert "SECRET" not in repr(Code("SECRET", "SECRET")) + str(Code("SECRET", None))


def test_a_secret_is_stored_as_its_hash_only():
    stored = hash_secret("tk_abc")
    assert stored == hash_secret("tk_abc") != hash_secret("tk_abd")
    assert b"tk_abc" not in stored


def test_fingerprints_survive_a_key_rotation_with_a_fingerprint_key():
    fingerprint_key = base64.b64encode(os.urandom(32)).decode()
    old = key_spec("old")
    before = CodeVault(old, fingerprint_key).fingerprint("GIFT-1")
    after = CodeVault(key_spec("new") + "," + old, fingerprint_key).fingerprint("GIFT-1")
    assert before == after
    assert CodeVault(old, fingerprint_key).fingerprint("GIFT-2") != before


@pytest.mark.parametrize("bad", ["notbase64!", base64.b64encode(b"short").decode()])
def test_a_bad_fingerprint_key_is_refused(bad: str):
    with pytest.raises(KeyConfigError, match="CODE_FINGERPRINT_KEY"):
        CodeVault(key_spec("k1"), bad)


@pytest.mark.parametrize(
    "spec",
    ["c2VjcmV0LWtleS1tYXRlcmlhbA", "k1:c2VjcmV0LWtleS1tYXRlcmlhbA", "k1:c2VjcmV0!!"],
    ids=["no-key-id", "too-short", "not-base64"],
)
def test_a_bad_key_is_refused_without_quoting_its_material(spec: str) -> None:
    with pytest.raises(KeyConfigError) as refused:
        CodeVault(spec)
    assert "entry 1" in str(refused.value)
    assert "c2VjcmV0" not in str(refused.value)


# --- what a code may hold ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redeem", "pin", "field", "what"),
    [
        (
            "GIFT\u200b1",
            None,
            "redeemCode",
            "invisible character (zero-width or format) (U+200B, character 5)",
        ),
        ("GIFT\u200d1", None, "redeemCode", "invisible"),
        ("\u2060GIFT1", None, "redeemCode", "invisible"),
        ("GIFT\u00ad1", None, "redeemCode", "invisible"),
        ("GIFT\ufe0f1", None, "redeemCode", "invisible"),
        ("GIFT\u202e1", None, "redeemCode", "invisible"),
        ("GIFT\u3164A", None, "redeemCode", "invisible"),
        ("GIFT\ufeff1", None, "redeemCode", "invisible"),
        ("GIFT\t1", None, "redeemCode", "control character"),
        ("GIFT\x7f1", None, "redeemCode", "control character"),
        ("GIFT\x851", None, "redeemCode", "control character"),
        ("GIFT\u20281", None, "redeemCode", "line break"),
        ("GIFT\ud8001", None, "redeemCode", "lone surrogate"),
        ("GIFT\u03781", None, "redeemCode", "does not assign"),
        ("GIFT-1", "12\u200b34", "pinCode", "invisible"),
        ("GIFT-1", "12\x0034", "pinCode", "control character"),
    ],
)
def test_invisible_and_control_characters_are_refused_naming_the_field(
    redeem: str, pin: str | None, field: str, what: str
):
    problem = code_problem(redeem, pin)
    assert problem is not None
    assert problem.startswith(f"{field} holds")
    assert what in problem
    assert "remove it" in problem
    assert "GIFT" not in problem


@pytest.mark.parametrize(
    "redeem",
    ["GIFT-ABCD-1234", "GIFT ABCD 1234", "ГИФТ-Ωμέγα-1", fullwidth("GIFT"), "código-ñ", "🎁-1"],
)
def test_visible_codes_in_any_script_are_accepted(redeem: str):
    assert code_problem(redeem, "0042") is None
