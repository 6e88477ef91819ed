"""`accounts create | credit | set-pin-format | rotate-token | revoke-token | disable | enable |
show`: wrap the api service's admin endpoints."""

import argparse
import uuid
from decimal import Decimal, InvalidOperation

from shared.cli.common import AdminClient, emit, fail, progress


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    accounts = sub.add_parser("accounts", help="client accounts, credentials and balances")
    actions = accounts.add_subparsers(dest="action", required=True)

    create = actions.add_parser(
        "create", help="create an account; prints its apiKey and accessToken (shown once)"
    )
    create.add_argument("--name", required=True)
    create.add_argument(
        "--balance",
        action="append",
        default=[],
        metavar="CUR=AMOUNT",
        help="opening balance, e.g. USD=1000.00 (repeatable)",
    )
    create.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_SECOND",
        help="this account's request rate limit (default: the service's)",
    )
    create.add_argument(
        "--pin-format",
        choices=PIN_FORMATS,
        help=PIN_FORMAT_HELP + " (default: integer)",
    )
    create.set_defaults(func=cmd_create)

    pin = actions.add_parser(
        "set-pin-format", help="how Get Codes sends this account's PINs: " + PIN_FORMAT_HELP
    )
    pin.add_argument("account_id")
    pin.add_argument("pin_format", choices=PIN_FORMATS)
    pin.set_defaults(func=cmd_set_pin_format)

    credit = actions.add_parser(
        "credit",
        help="add money to one currency balance, once: prints its idempotency key on stderr; "
        "to retry the same credit (after a timeout, say), pass that key back",
    )
    credit.add_argument("account_id")
    credit.add_argument("--amount", required=True)
    credit.add_argument("--currency", required=True)
    credit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the key printed by the credit to retry (default: a new one, for a new credit)",
    )
    credit.set_defaults(func=cmd_credit)

    rotate = actions.add_parser(
        "rotate-token", help="issue a new access token; old ones expire after a grace period"
    )
    rotate.add_argument("account_id")
    rotate.add_argument("--grace-seconds", type=int, default=900)
    rotate.set_defaults(func=cmd_rotate)

    revoke = actions.add_parser(
        "revoke-token",
        help="end every access token of the account now; its API key keeps working (issue a "
        "new token with rotate-token)",
    )
    revoke.add_argument("account_id")
    revoke.set_defaults(func=cmd_account_action, path="revoke-token")

    disable = actions.add_parser(
        "disable", help="no credential of the account authenticates any more (undo: enable)"
    )
    disable.add_argument("account_id")
    disable.set_defaults(func=cmd_account_action, path="disable")

    enable = actions.add_parser("enable", help="undo disable: the account's credentials work again")
    enable.add_argument("account_id")
    enable.set_defaults(func=cmd_account_action, path="enable")

    show = actions.add_parser("show", help="an account and its balances")
    show.add_argument("account_id")
    show.set_defaults(func=cmd_show)


PIN_FORMATS = ("integer", "string")
PIN_FORMAT_HELP = (
    "'integer' sends pinCode as EZ's 32-bit integer (a PIN an integer cannot carry exactly, "
    "like 0042, is refused by Get Codes with PIN_NOT_INTEGER), 'string' sends every PIN exactly "
    "as stocked"
)


def _amount(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"{text!r} is not an amount: write it like 100.00")
    if not value.is_finite() or value <= 0 or value.as_tuple().exponent < -2:  # type: ignore[operator]
        fail(f"{text!r} is not a positive amount with at most two decimals, like 100.00")
    return str(value)


def _currency(text: str) -> str:
    if len(text) != 3 or not text.isalpha():
        fail(f"{text!r} is not an ISO-4217 currency code such as USD")
    return text.upper()


def parse_balance(spec: str) -> dict[str, str]:
    currency, sep, amount = spec.partition("=")
    if not sep:
        fail(f"--balance {spec!r}: write it as CURRENCY=AMOUNT, e.g. USD=1000.00")
    return {"currency": _currency(currency), "amount": _amount(amount)}


def cmd_create(args: argparse.Namespace) -> None:
    balances = [parse_balance(b) for b in args.balance]
    body: dict[str, object] = {"name": args.name, "balances": balances}
    if args.rate_limit is not None:
        if args.rate_limit <= 0:
            fail("--rate-limit must be a positive number of requests per second")
        body["rateLimitPerSecond"] = str(round(args.rate_limit, 2))
    if args.pin_format is not None:
        body["pinFormat"] = args.pin_format
    emit(AdminClient("api").call("POST", "/admin/accounts", json=body))


def cmd_credit(args: argparse.Namespace) -> None:
    body = {"amount": _amount(args.amount), "currency": _currency(args.currency)}
    key = args.idempotency_key or f"cli-{uuid.uuid4()}"
    if not 1 <= len(key) <= 200 or not all("!" <= c <= "~" for c in key):
        fail(f"--idempotency-key {key!r}: use 1 to 200 printable characters without spaces")
    progress(
        f"idempotency key: {key} (if this credit's outcome is unknown, run it again with "
        f"--idempotency-key {key}: it is applied once)"
    )
    done = AdminClient("api").call(
        "POST",
        f"/admin/accounts/{args.account_id}/credit",
        json=body,
        headers={"Idempotency-Key": key},
    )
    emit(done)
    if done["replayed"]:
        progress("This credit was applied before, with this key: nothing was added now.")


def cmd_set_pin_format(args: argparse.Namespace) -> None:
    emit(
        AdminClient("api").call(
            "PUT",
            f"/admin/accounts/{args.account_id}/pin-format",
            json={"pinFormat": args.pin_format},
        )
    )


def cmd_rotate(args: argparse.Namespace) -> None:
    emit(
        AdminClient("api").call(
            "POST",
            f"/admin/accounts/{args.account_id}/rotate-token",
            json={"graceSeconds": args.grace_seconds},
        )
    )


def cmd_account_action(args: argparse.Namespace) -> None:
    done = AdminClient("api").call("POST", f"/admin/accounts/{args.account_id}/{args.path}")
    emit(done)
    progress(
        f"Takes effect on every api process within {done['effectiveWithinSeconds']:g} s "
        "(API_AUTH_CACHE_TTL_S)."
    )


def cmd_show(args: argparse.Namespace) -> None:
    emit(AdminClient("api").call("GET", f"/admin/accounts/{args.account_id}"))
