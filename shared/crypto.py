"""Secrets and code material: hashing of credentials, AES-GCM encryption of codes at rest.

Codes are encrypted with a key from `CODE_ENCRYPTION_KEYS` ("kid:base64key,kid2:base64key",
the first one encrypts, all of them decrypt) so keys can rotate; the key id is stored beside
every ciphertext. A code in stock is sealed to its stock item (the associated data names its
SKU and stock id), so a ciphertext copied onto another row does not open; what it is bound
to travels with it (`Binding`). Duplicate codes are detected through a keyed fingerprint of
the code's normal form (`normal_form`), never by storing or comparing plaintext.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass, replace
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
# What `CodeVault.fingerprint` computes: 2 is the HMAC of `normal_form`; 1 (rows stocked
# before migration 0006 of inventory) was the HMAC of the code as given.
FINGERPRINT_VERSION = 2


class KeyConfigError(ValueError):
    pass


class Binding(IntEnum):
    """What a ciphertext is bound to (its AES-GCM associated data); stored beside it."""

    SKU = 1
    """Its SKU only: codes stocked before stock-bound seals (migration 0005 of inventory),
    and a supplier's codes on their way to inventory, which has not numbered them yet."""
    STOCK_ITEM = 2
    """Its SKU and its stock id: every code stocked since."""


# The wire form names the binding for stock items only: a SKU-bound code keeps the form it
# had before bindings existed ("kid:base64"), so codes sealed then read as they always did.
_STOCK_ITEM_WIRE_PREFIX = "v2"


@dataclass(frozen=True)
class SealedCode:
    key_id: str
    blob: bytes  # nonce || ciphertext+tag
    binding: Binding

    def to_wire(self) -> str:
        sealed = f"{self.key_id}:{base64.b64encode(self.blob).decode()}"
        if self.binding is Binding.STOCK_ITEM:
            return f"{_STOCK_ITEM_WIRE_PREFIX}:{sealed}"
        return sealed

    @classmethod
    def from_wire(cls, value: str) -> "SealedCode":
        """'kid:base64' (bound to its SKU) or 'v2:kid:base64' (bound to its stock item). Key
        ids hold no ':' (CODE_ENCRYPTION_KEYS separates them from their key with one)."""
        parts = value.split(":")
        if len(parts) == 2:
            binding, (key_id, b64) = Binding.SKU, parts
        elif len(parts) == 3 and parts[0] == _STOCK_ITEM_WIRE_PREFIX:
            binding, (key_id, b64) = Binding.STOCK_ITEM, parts[1:]
        else:
            raise ValueError("not a sealed code: expected 'kid:base64' or 'v2:kid:base64'")
        try:
            return cls(key_id, base64.b64decode(b64, validate=True), binding)
        except binascii.Error as exc:
            raise ValueError("not a sealed code: its ciphertext is not base64") from exc


def associated_data(binding: Binding, sku: str, stock_id: int | None) -> bytes:
    """The AES-GCM associated data of a code: its SKU (Binding.SKU, as codes were sealed
    before bindings), or its SKU and stock id. The latter starts with a NUL, which no SKU
    holds (PostgreSQL text cannot), so no SKU-bound ciphertext opens as a stock item's."""
    if binding is Binding.SKU:
        return sku.encode()
    if stock_id is None:
        raise ValueError("a code sealed to its stock item opens only with its stock id")
    return f"\x00stock-item\x00{sku}\x00{stock_id}".encode()


@dataclass(frozen=True)
class Code:
    redeem_code: str
    pin_code: str | None

    def __repr__(self) -> str:  # never print code material by accident
        return "Code(<redacted>)"

    __str__ = __repr__


MAX_REDEEM_CODE = 256
MAX_PIN_CODE = 64


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters drawn as
# nothing. Most are format characters (Cf); the others are variation selectors, Hangul
# fillers and code points reserved as ignorable.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


_IGNORABLE = re.compile(
    "[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in _DEFAULT_IGNORABLE) + "]"
)


def is_invisible(char: str) -> bool:
    """A control (Cc) or format (Cf) character, or any other default-ignorable one."""
    return unicodedata.category(char) in ("Cc", "Cf") or _IGNORABLE.match(char) is not None


def normal_form(redeem_code: str) -> str:
    """The form in which two redeem codes are the same code: invisible characters removed,
    then NFKC, case folding, and NFKC again (case folding can undo a composition). Close to
    Unicode's NFKC_Casefold; idempotent (tests/unit/test_crypto.py checks every code point).
    docs/decisions/code-fingerprints-and-bindings.md says why case does not tell codes apart."""
    if redeem_code.isascii():  # most codes: NFKC changes no ASCII, casefold is lower
        if not redeem_code.isprintable():
            redeem_code = "".join(ch for ch in redeem_code if ch.isprintable())
        return redeem_code.lower()
    visible = "".join(ch for ch in redeem_code if not is_invisible(ch))
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", visible).casefold())


def _character_problem(field: str, value: str) -> str | None:
    for position, char in enumerate(value, start=1):
        category = unicodedata.category(char)
        # Where and of what kind, never which character: it is one character of a secret.
        where = f"(character {position}, Unicode category {category})"
        if category == "Cc" or category in ("Zl", "Zp"):
            what = "a control character or line break"
        elif is_invisible(char):
            what = "an invisible character (zero-width or format)"
        elif category == "Cs":
            what = "a lone surrogate (not a character)"
        elif category == "Cn":
            what = f"a character Unicode {unicodedata.unidata_version} does not assign"
        else:
            continue
        return f"{field} holds {what} {where}: codes hold visible characters only; remove it"
    return None


def code_problem(redeem_code: str, pin_code: str | None) -> str | None:
    """What is wrong with a code to stock, naming the field but never quoting the code; None
    if nothing: a redeem code of 1 to MAX_REDEEM_CODE characters, a PIN of at most
    MAX_PIN_CODE, neither with whitespace around it nor, in it, a control character, line
    break, invisible (zero-width or format) character, lone surrogate or unassigned code
    point (whose normal form a later Unicode version could change)."""
    if not redeem_code:
        return "redeemCode is empty"
    if len(redeem_code) > MAX_REDEEM_CODE:
        return f"redeemCode is longer than {MAX_REDEEM_CODE} characters"
    if pin_code is not None and len(pin_code) > MAX_PIN_CODE:
        return f"pinCode is longer than {MAX_PIN_CODE} characters"
    for field, value in (("redeemCode", redeem_code), ("pinCode", pin_code or "")):
        if value != value.strip():
            return f"{field} starts or ends with whitespace"
        if problem := _character_problem(field, value):
            return problem
    return None


INT32_MAX = 2**31 - 1


def pin_as_integer(pin: str) -> int | None:
    """The PIN as an int32 `pinCode` when an integer carries it exactly (its canonical decimal:
    ASCII digits, no sign, no leading zero, at most 2^31-1); None when it cannot, because the
    integer would be another PIN ("0042" would arrive as 42)."""
    if not (pin.isascii() and pin.isdigit()) or (len(pin) > 1 and pin[0] == "0"):
        return None
    value = int(pin)
    return value if value <= INT32_MAX else None


def pin_kind_problem(pin_code: str | None, pin_kind: str) -> str | None:
    """What keeps a code out of a product whose PINs are declared `pin_kind` (docs/api.md,
    "PIN format"), never quoting the PIN; None if nothing. An `integer` product holds codes
    without PIN or with a PIN an int32 carries exactly; a `string` product holds any PIN."""
    if pin_kind != "integer" or pin_code is None or pin_as_integer(pin_code) is not None:
        return None
    return (
        "pinCode is not an integer PIN (digits only, no leading zero, at most 2147483647) "
        "and the product's pinKind is integer: stock it in a product whose pinKind is string"
    )


_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread


def random_code(prefix: str, *, group_length: int, pin_digits: int) -> Code:
    """A random code for demos, load tests and the simulated supplier: `prefix` and four
    groups of `group_length` characters, a PIN of `pin_digits` digits (never starting with 0,
    so that up to 9 digits it is a canonical int32 and reaches integer-PIN accounts)."""
    groups = (
        "".join(secrets.choice(_CODE_ALPHABET) for _ in range(group_length)) for _ in range(4)
    )
    return Code(
        redeem_code="-".join((prefix, *groups)),
        pin_code=str(10 ** (pin_digits - 1) + secrets.randbelow(9 * 10 ** (pin_digits - 1))),
    )


MAX_NAMED_KEY_ID = 24


class CodeVault:
    def __init__(self, keys_spec: str, fingerprint_key: str | None = None) -> None:
        """`fingerprint_key` (base64, 32 bytes) keys the duplicate detection. It must stay
        the same for the life of the stock, whatever encryption keys come and go: without
        it, fingerprints derive from the first encryption key, which a rotation changes."""
        self._keys: dict[str, AESGCM] = {}
        self._active: str | None = None
        fingerprint_material = b""
        for position, part in enumerate((p.strip() for p in keys_spec.split(",")), start=1):
            if not part:
                continue
            kid, sep, b64 = part.partition(":")
            # Errors name an entry by its position (and its id when it has one), never by its
            # text: without the separator the whole entry is key material, and an entry written
            # key first ('base64:kid') has its key where the id should be, so an id longer than
            # any id is not named either (a 32-byte key is 44 characters of base64).
            named = sep and kid and len(kid) <= MAX_NAMED_KEY_ID
            entry = f"entry {position}" + (f" (key id {kid!r})" if named else "")
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError as exc:
                raise KeyConfigError(
                    f"CODE_ENCRYPTION_KEYS: the key of {entry} is not base64"
                ) from exc
            if not sep or not kid or len(raw) != 32:
                raise KeyConfigError(
                    f"CODE_ENCRYPTION_KEYS must be 'kid:base64(32 bytes)[,kid:...]'; {entry} is not"
                )
            self._keys[kid] = AESGCM(raw)
            if self._active is None:
                self._active = kid
                fingerprint_material = raw
        if self._active is None:
            raise KeyConfigError("CODE_ENCRYPTION_KEYS is empty: give at least one key")
        if fingerprint_key is not None:
            try:
                fingerprint_material = base64.b64decode(fingerprint_key, validate=True)
            except ValueError as exc:
                raise KeyConfigError("CODE_FINGERPRINT_KEY is not base64") from exc
            if len(fingerprint_material) != 32:
                raise KeyConfigError("CODE_FINGERPRINT_KEY must be base64 of 32 bytes")
        # Version 1 fingerprinted the code as given, under sha256("fingerprint|" + key); no
        # code computes it any more. A key of its own per version: no fingerprint of one
        # version can equal one of the other.
        self._fingerprint_key = hashlib.sha256(b"fingerprint-v2|" + fingerprint_material).digest()

    def seal(self, code: Code, sku: str, stock_id: int) -> SealedCode:
        """Seals a code to its stock item: it opens only as the stock item `stock_id` of
        `sku`."""
        return self._seal(code, Binding.STOCK_ITEM, sku, stock_id)

    def seal_to_sku(self, code: Code, sku: str) -> SealedCode:
        """Seals a code not yet in stock (a supplier's delivery) to its SKU only."""
        return self._seal(code, Binding.SKU, sku, None)

    def _seal(self, code: Code, binding: Binding, sku: str, stock_id: int | None) -> SealedCode:
        assert self._active is not None
        nonce = os.urandom(NONCE_BYTES)
        plaintext = json.dumps({"r": code.redeem_code, "p": code.pin_code}).encode()
        aad = associated_data(binding, sku, stock_id)
        blob = nonce + self._keys[self._active].encrypt(nonce, plaintext, aad)
        return SealedCode(self._active, blob, binding)

    def open(self, sealed: SealedCode, sku: str, stock_id: int | None) -> Code:
        """Opens a code with what it was sealed to (its binding says which: `stock_id` is
        needed only for a stock item's). Raises cryptography's InvalidTag if it was sealed
        to anything else."""
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise KeyConfigError(
                f"no key {sealed.key_id!r} in CODE_ENCRYPTION_KEYS: codes sealed with it "
                "open only once it is listed again"
            )
        nonce, body = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        aad = associated_data(sealed.binding, sku, stock_id)
        data = json.loads(key.decrypt(nonce, body, aad))
        return Code(redeem_code=data["r"], pin_code=data["p"])

    def open_sold(self, sealed: SealedCode, sku: str, stock_id: int | None) -> Code:
        """Opens a code sold to an order. An inventory older than stock-item seals (running
        while the schema had moved on, docs/runbook.md) sells a code sealed to its stock item
        in the old wire form, as if sealed to its SKU: if it does not open as that, it is
        tried as its stock item's (stronger associated data, so nothing opens that should
        not)."""
        try:
            return self.open(sealed, sku, stock_id)
        except InvalidTag:
            if sealed.binding is not Binding.SKU or stock_id is None:
                raise
        return self.open(replace(sealed, binding=Binding.STOCK_ITEM), sku, stock_id)

    @property
    def key_ids(self) -> set[str]:
        """The ids of the keys codes open with."""
        return set(self._keys)

    def fingerprint(self, redeem_code: str) -> bytes:
        """The keyed fingerprint (version FINGERPRINT_VERSION) of the code's normal form."""
        message = normal_form(redeem_code).encode()
        return hmac.new(self._fingerprint_key, message, hashlib.sha256).digest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> bytes:
    """Credentials are 256-bit random values, so one SHA-256 is a sound at-rest hash."""
    return hashlib.sha256(secret.encode()).digest()
