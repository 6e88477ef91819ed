"""`fx set` and `fx list`: the exchange rates orders paid in another currency are charged at."""

import argparse
import re
from decimal import Decimal, InvalidOperation

from shared.cli.common import AdminClient, emit, progress


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    fx = sub.add_parser("fx", help="exchange rates (1 unit of base = rate units of quote)")
    actions = fx.add_subparsers(dest="action", required=True)
    setting = actions.add_parser(
        "set", help="set the rate of BASE→QUOTE for orders accepted from now on"
    )
    setting.add_argument("--base", type=_currency, required=True, help="e.g. USD")
    setting.add_argument("--quote", type=_currency, required=True, help="e.g. EUR")
    setting.add_argument(
        "--rate", type=_rate, required=True, help="units of quote per base, up to 6 decimals"
    )
    setting.set_defaults(func=cmd_set)
    actions.add_parser("list", help="the rates set").set_defaults(func=cmd_list)


def _currency(text: str) -> str:
    if not re.fullmatch(r"[A-Z]{3}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: give a currency code of 3 capitals (USD)")
    return text


def _rate(text: str) -> str:
    try:
        rate = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r}: give a decimal number (0.9150)") from None
    if not rate.is_finite() or rate <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate must be positive")
    return text


def cmd_set(args: argparse.Namespace) -> None:
    stored = AdminClient("api").call(
        "PUT", f"/admin/fx-rates/{args.base}/{args.quote}", json={"rate": args.rate}
    )
    progress(f"1 {args.base} = {stored['rate']} {args.quote} for orders accepted from now on")
    emit(stored)


def cmd_list(args: argparse.Namespace) -> None:
    emit(AdminClient("api").call("GET", "/admin/fx-rates")["rates"])
