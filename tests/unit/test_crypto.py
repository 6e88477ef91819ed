import base64
import dataclasses
import os
import sys
import unicodedata

import pytest
from cryptography.exceptions import InvalidTag

from shared.crypto import (
    Binding,
    Code,
    CodeVault,
    KeyConfigError,
    SealedCode,
    code_problem,
    hash_secret,
    is_invisible,
    normal_form,
)
from tests.helpers import fullwidth


def key_spec(*kids: str) -> str:
    return ",".join(f"{k}:{base64.b64encode(os.urandom(32)).decode()}" for k in kids)


def test_a_sealed_code_opens_as_its_stock_item_and_holds_no_plaintext():
    vault = CodeVault(key_spec("k1"))
    sealed = vault.seal(Code("GIFT-ABCD-1234", "0042"), "SKU-1", 17)
    assert b"GIFT-ABCD-1234" not in sealed.blob
    assert "GIFT-ABCD-1234" not in sealed.to_wire()
    assert sealed.to_wire().startswith("v2:k1:")
    opened = vault.open(SealedCode.from_wire(sealed.to_wire()), "SKU-1", 17)
    assert (opened.redeem_code, opened.pin_code) == ("GIFT-ABCD-1234", "0042")


@pytest.mark.parametrize(
    ("sku", "stock_id"), [("SKU-1", 18), ("SKU-2", 17), ("SKU-11", 7)], ids=str
)
def test_a_ciphertext_copied_onto_another_stock_item_does_not_open(sku: str, stock_id: int):
    vault = CodeVault(key_spec("k1"))
    sealed = vault.seal(Code("X", None), "SKU-1", 17)
    with pytest.raises(InvalidTag):
        vault.open(sealed, sku, stock_id)


def test_a_stock_items_ciphertext_needs_its_stock_id():
    vault = CodeVault(key_spec("k1"))
    with pytest.raises(ValueError, match="stock id"):
        vault.open(vault.seal(Code("X", None), "SKU-1", 17), "SKU-1", None)


# Sealed by the code before bindings existed: CodeVault(LEGACY_KEYS).seal(Code(...),
# aad="SKU-LEGACY"), as inventory stored and the api received every code until then.
LEGACY_KEYS = "k-2024:" + base64.b64encode(bytes(range(32))).decode()
LEGACY_WIRE = (
    "k-2024:2nmTmW100n7NPziC+CApInfOX5WvkRrj+1ryCOa2lVCNBOFWttRJAjf4tPAQuCCCmlxwBIVsxxVbKgEOt"
    "uvilugg"
)


def test_a_code_sealed_to_its_sku_before_bindings_still_opens():
    sealed = SealedCode.from_wire(LEGACY_WIRE)
    assert sealed.binding is Binding.SKU
    opened = CodeVault(LEGACY_KEYS).open(sealed, "SKU-LEGACY", 12345)  # the id plays no part
    assert (opened.redeem_code, opened.pin_code) == ("GIFT-LEGACY-0001", "4321")
    assert sealed.to_wire() == LEGACY_WIRE
    with pytest.raises(InvalidTag):
        CodeVault(LEGACY_KEYS).open(sealed, "SKU-OTHER", 12345)


def test_a_sku_bound_ciphertext_relabelled_as_a_stock_item_does_not_open():
    """Who can write the binding column cannot turn a code sealed to a SKU into a stock
    item's: a stock item's associated data starts with a NUL, which no SKU holds."""
    vault = CodeVault(key_spec("k1"))
    for sku in ("S", "stock-item:S:1", "stock-item S 1"):
        relabelled = dataclasses.replace(
            vault.seal_to_sku(Code("X", None), sku), binding=Binding.STOCK_ITEM
        )
        with pytest.raises(InvalidTag):
            vault.open(relabelled, "S", 1)


def test_a_suppliers_code_is_sealed_to_its_sku():
    vault = CodeVault(key_spec("k1"))
    sealed = SealedCode.from_wire(vault.seal_to_sku(Code("X", "1"), "SKU-1").to_wire())
    assert (sealed.binding, sealed.to_wire().count(":")) == (Binding.SKU, 1)
    assert vault.open(sealed, "SKU-1", None).redeem_code == "X"


@pytest.mark.parametrize("wire", ["", "k1", "v3:k1:AAAA", "v2:k1:AA:AA", "k1:not base64!"])
def test_what_is_not_a_sealed_code_is_refused(wire: str):
    with pytest.raises(ValueError, match="not a sealed code"):
        SealedCode.from_wire(wire)


def test_keys_rotate_old_ciphertexts_still_open():
    old = key_spec("old")
    sealed = CodeVault(old).seal(Code("R", "P"), "S", 1)
    rotated = CodeVault(key_spec("new") + "," + old)
    assert rotated.open(sealed, "S", 1).redeem_code == "R"
    assert rotated.seal(Code("R", "P"), "S", 1).key_id == "new"
    with pytest.raises(KeyConfigError, match="'old'"):
        CodeVault(key_spec("new")).open(sealed, "S", 1)


@pytest.mark.parametrize(
    "spec", ["", "k1", "k1:notbase64!", "k1:" + base64.b64encode(b"x").decode()]
)
def test_bad_key_configuration_is_refused_with_a_message(spec: str):
    with pytest.raises(KeyConfigError, match="CODE_ENCRYPTION_KEYS"):
        CodeVault(spec)


def test_a_key_written_before_its_id_is_not_quoted_in_the_error():
    # Third review: 'base64key:kid' puts the key where the id goes; the message names the
    # entry by position only.
    key = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(KeyConfigError) as refused:
        CodeVault(f"{key}:k1")
    assert key not in str(refused.value)
    assert "entry 1" in str(refused.value)


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


# --- the normal form of a code, and what a code may hold -----------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        "gift-abcd-1234",  # case
        "Gift-AbCd-1234",
        fullwidth("GIFT-ABCD-1234"),  # compatibility forms (NFKC)
        "GIFT-ABCD-12\u200b34",  # zero-width space
        "\ufeffGIFT-ABCD-1234",  # byte order mark
        "GIFT-AB\u00adCD-1234",  # soft hyphen
        "GIFT-ABCD-1234\ufe0f",  # variation selector
        "GIFT-\u202eABCD-1234",  # right-to-left override
        "GIFT-ABCD-1234\u0085",  # a C1 control
    ],
)
def test_a_code_differing_only_in_form_case_or_invisibles_has_the_same_fingerprint(
    variant: str,
):
    vault = CodeVault(key_spec("k1"))
    assert normal_form(variant) == normal_form("GIFT-ABCD-1234") == "gift-abcd-1234"
    assert vault.fingerprint(variant) == vault.fingerprint("GIFT-ABCD-1234")


@pytest.mark.parametrize(
    ("one", "other"),
    [("GIFT-ABCD-1234", "GIFT-ABCD-1235"), ("GIFT-ABCD-1234", "GIFT-ABCD 1234"), ("É1", "E1")],
)
def test_different_codes_keep_different_fingerprints(one: str, other: str):
    vault = CodeVault(key_spec("k1"))
    assert vault.fingerprint(one) != vault.fingerprint(other)


def test_composed_and_decomposed_forms_and_sharp_s_are_one_code():
    assert normal_form("CAFE\u0301") == normal_form("CAFÉ") == normal_form("café")
    assert normal_form("STRASSE") == normal_form("straße")


def test_the_normal_form_is_idempotent_and_visible_for_every_assigned_code_point():
    unstable = []
    for point in range(sys.maxunicode + 1):
        char = chr(point)
        if unicodedata.category(char) in ("Cs", "Cn"):  # refused in codes
            continue
        once = normal_form(char)
        if normal_form(once) != once or any(is_invisible(c) for c in once):
            unstable.append(f"U+{point:04X}")
    assert unstable == []


def test_fingerprints_of_version_2_differ_from_version_1():
    """Version 1 was HMAC(sha256("fingerprint|" + key), code as given)."""
    import hashlib
    import hmac

    material = os.urandom(32)
    vault = CodeVault(key_spec("k1"), base64.b64encode(material).decode())
    v1_key = hashlib.sha256(b"fingerprint|" + material).digest()
    v1 = hmac.new(v1_key, b"gift-1", hashlib.sha256).digest()
    assert vault.fingerprint("gift-1") != v1


@pytest.mark.parametrize(
    ("redeem", "pin", "field", "what"),
    [
        (
            "GIFT\u200b1",
            None,
            "redeemCode",
            "invisible character (zero-width or format) (character 5, Unicode category Cf)",
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
    # Review finding 10: not which character either (one character of a secret).
    assert "U+" not in problem
    assert not any(f"{ord(c):04X}" in problem for c in redeem + (pin or "") if ord(c) > 0x7E)


@pytest.mark.parametrize(
    "redeem",
    ["GIFT-ABCD-1234", "GIFT ABCD 1234", "ГИФТ-Ωμέγα-1", fullwidth("GIFT"), "código-ñ", "🎁-1"],
)
def test_visible_codes_in_any_script_are_accepted(redeem: str):
    assert code_problem(redeem, "0042") is None


def test_a_code_sealed_to_its_stock_item_opens_when_sold_in_the_old_wire_form() -> None:
    # Review finding 3: an inventory older than stock-item seals sells a binding 2 row as
    # 'kid:base64'; the api opens it as its stock item's, and only that.
    vault = CodeVault(f"k1:{base64.b64encode(bytes(32)).decode()}")
    sealed = vault.seal(Code("GIFT-1", "7"), "SKU-1", 42)
    old_wire = SealedCode.from_wire(sealed.to_wire().removeprefix("v2:"))
    assert old_wire.binding is Binding.SKU
    with pytest.raises(InvalidTag):
        vault.open(old_wire, "SKU-1", 42)
    assert vault.open_sold(old_wire, "SKU-1", 42) == Code("GIFT-1", "7")
    with pytest.raises(InvalidTag):
        vault.open_sold(old_wire, "SKU-1", 43)
    sku_bound = vault.seal_to_sku(Code("GIFT-2", None), "SKU-1")
    assert vault.open_sold(sku_bound, "SKU-1", 7).redeem_code == "GIFT-2"
