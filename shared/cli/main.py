"""Entry point of the `instant-orders` command."""

import argparse
import sys

from shared.cli import accounts, audit, catalog, demo, fx, infra, orders
from shared.cli.common import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instant-orders",
        description="Operate an instant-orders stack: accounts, products, stock, orders, exchange "
        "rates, set-up, the audit of admin actions.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (accounts, catalog, demo, infra, orders, fx, audit):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
