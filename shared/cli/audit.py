"""`audit list`: the api's record of admin actions (who, from where, what, when, the answer)."""

import argparse

from shared.cli.common import AdminClient, emit

LIMIT_MAX = 1000


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    audit = sub.add_parser("audit", help="the api's record of admin actions")
    actions = audit.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="the most recent admin actions (not reads), refused ones too, newest first"
    )
    listing.add_argument(
        "--limit",
        type=_limit,
        default=50,
        help=f"how many (default 50, at most {LIMIT_MAX})",
    )
    listing.set_defaults(func=cmd_list)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to {LIMIT_MAX}")
    return int(text)


def cmd_list(args: argparse.Namespace) -> None:
    emit(AdminClient("api").call("GET", "/admin/audit", params={"limit": args.limit})["items"])
