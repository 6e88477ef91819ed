"""`orders show | cancel`: one order's whole history across the three services, and ending an
order that cannot end by itself (its decision never came)."""

import argparse
import time
from typing import Any
from urllib.parse import quote

from shared.cli.common import AdminClient, CliError, emit, fail, progress

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
    if decision is None:
        decided = "never decided (no PlaceOrder applied)"
    elif "unavailable" in decision:
        decided = f"unknown: {decision['unavailable']}"
    else:
        decided = f"decided {decision['state']}"
    steps.append({"at": "", "by": "inventory", "what": decided})
    if backorder and "unavailable" not in backorder:
        steps.append(
            {
                "at": backorder["placedAt"],
                "by": "fulfilment",
                "what": f"backorder {backorder['state']}, deadline {backorder['deadlineAt']}",
            }
        )
    return steps


def _known_to(service: str, path: str) -> Any:
    """What `service` knows of the order (None: nothing), or why it could not say: `orders
    show` is for when something is broken, so one service down must not hide the others."""
    try:
        return AdminClient(service).find(path)
    except CliError as exc:
        return {"unavailable": str(exc)}


def cmd_show(args: argparse.Namespace) -> None:
    path = _path(args.transaction_id)
    order = AdminClient("api").find(f"/admin/orders/{path}")
    if order is None:
        fail(f"No order has transactionId {args.transaction_id!r}: check the id.")
    if order.get("bulk"):
        # Its units are orders of their own, each with its history across the services.
        emit(order)
        progress(
            f"bulk order {order['transactionId']}: each unit is an order of its own, e.g. "
            f"`instant-orders orders show {order['lines'][0]['firstUnit']}`"
        )
        return
    decision = _known_to("inventory", f"/admin/decisions/{path}")
    backorder = _known_to("fulfilment", f"/admin/backorders/{path}")
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
    if args.wait_seconds < 0:
        fail("--wait-seconds must be 0 or more")
    api = AdminClient("api")
    asked = api.call("POST", f"/admin/orders/{path}/cancel")
    if isinstance(asked, dict) and asked.get("bulk"):
        # a bulk order: each waiting unit is cancelled and refunded on inventory's answer
        emit(asked)
        progress(
            f"asked inventory to cancel the {asked['units']} unit(s) of bulk order "
            f"{args.transaction_id} still waiting; each is refunded when inventory answers "
            f"(GET /v2/orders/{args.transaction_id}/codes shows them CANCELLED)"
        )
        return
    if args.wait_seconds == 0:
        progress(
            f"asked inventory to cancel {args.transaction_id}; follow it with "
            f"`instant-orders orders show {args.transaction_id}`"
        )
        return
    progress(f"asked inventory to cancel {args.transaction_id}; waiting for its answer")
    deadline = time.monotonic() + args.wait_seconds
    order: dict[str, Any] | None = None
    while True:
        try:
            order = api.call("GET", f"/admin/orders/{path}")
        except CliError as exc:  # the cancellation is queued: a hiccup here changes nothing
            progress(f"could not read the order ({exc}); trying again")
        if (order is not None and order["status"] != "PROCESSING") or (
            time.monotonic() >= deadline
        ):
            break
        time.sleep(POLL_S)
    if order is None:
        fail(
            "The cancellation is queued, but the api did not answer while waiting: follow it "
            f"with `instant-orders orders show {args.transaction_id}`."
        )
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
