"""`orders show | cancel`: one order's whole history across the three services, and ending an
order that cannot end by itself (its decision never came)."""

import argparse
import time
from typing import Any
from urllib.parse import quote

from shared.cli.common import AdminClient, emit, fail, progress

POLL_S = 0.5


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    orders = sub.add_parser("orders", help="one order's history; cancelling a stuck order")
    actions = orders.add_subparsers(dest="action", required=True)

    show = actions.add_parser(
        "show", help="an order as the api, inventory and fulfilment each know it, and its history"
    )
    show.add_argument("transaction_id")
    show.set_defaults(func=cmd_show)

    cancel = actions.add_parser(
        "cancel",
        help="cancel an order still PROCESSING and refund it (through inventory: a code it "
        "sold meanwhile wins)",
    )
    cancel.add_argument("transaction_id")
    cancel.add_argument(
        "--wait-seconds",
        type=float,
        default=60.0,
        help="how long to wait for the outcome (default 60; 0: do not wait)",
    )
    cancel.set_defaults(func=cmd_cancel)


def _path(transaction_id: str) -> str:
    if not transaction_id or len(transaction_id) > 64 or not transaction_id.isprintable():
        fail(f"{transaction_id!r} is not a transactionId (a 26-character ULID)")
    return quote(transaction_id, safe="")


def history(order: dict[str, Any], decision: Any, backorder: Any) -> list[dict[str, str]]:
    """What happened to the order, oldest first, from what each service recorded."""
    steps = [{"at": order["createdAt"], "by": "api", "what": "accepted PROCESSING"}]
    for move in order["money"]:
        steps.append(
            {
                "at": move["at"],
                "by": "api",
                "what": f"{move['kind']} {move['amount']} {move['currency']}",
            }
        )
    if order["backorderedAt"]:
        steps.append({"at": order["backorderedAt"], "by": "api", "what": "backordered"})
    if order["askedAgainAt"]:
        steps.append(
            {"at": order["askedAgainAt"], "by": "api", "what": "last asked inventory again"}
        )
    if order["status"] != "PROCESSING":
        reason = f" ({order['cancelReason']})" if order["cancelReason"] else ""
        steps.append({"at": order["updatedAt"], "by": "api", "what": order["status"] + reason})
    steps.sort(key=lambda step: step["at"])
    decided = (
        f"decided {decision['state']}" if decision else "never decided (no PlaceOrder applied)"
    )
    steps.append({"at": "", "by": "inventory", "what": decided})
    if backorder:
        steps.append(
            {
                "at": backorder["placedAt"],
                "by": "fulfilment",
                "what": f"backorder {backorder['state']}, deadline {backorder['deadlineAt']}",
            }
        )
    return steps


def cmd_show(args: argparse.Namespace) -> None:
    path = _path(args.transaction_id)
    order = AdminClient("api").find(f"/admin/orders/{path}")
    if order is None:
        fail(f"No order has transactionId {args.transaction_id!r}: check the id.")
    decision = AdminClient("inventory").find(f"/admin/decisions/{path}")
    backorder = AdminClient("fulfilment").find(f"/admin/backorders/{path}")
    emit(
        {
            "order": order,
            "inventory": decision,
            "fulfilment": backorder,
            "history": history(order, decision, backorder),
        }
    )


def cmd_cancel(args: argparse.Namespace) -> None:
    path = _path(args.transaction_id)
    api = AdminClient("api")
    api.call("POST", f"/admin/orders/{path}/cancel")
    progress(f"asked inventory to cancel {args.transaction_id}; waiting for its answer")
    deadline = time.monotonic() + args.wait_seconds
    order = api.call("GET", f"/admin/orders/{path}")
    while order["status"] == "PROCESSING" and time.monotonic() < deadline:
        time.sleep(POLL_S)
        order = api.call("GET", f"/admin/orders/{path}")
    emit(order)
    if order["status"] == "COMPLETED":
        fail(
            "Not cancelled: inventory had sold the order a code before the cancellation "
            "reached it, so it stays COMPLETED (the client can fetch its code)."
        )
    if order["status"] == "PROCESSING":
        fail(
            f"No answer from inventory within {args.wait_seconds:g} s: the cancellation is "
            "queued and applies when inventory reads it. Is inventory up (`make status`)? "
            f"Follow it with `instant-orders orders show {args.transaction_id}`."
        )
    progress(f"cancelled ({order['cancelReason']}) and refunded")
