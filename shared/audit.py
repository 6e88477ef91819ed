"""The audit of admin actions: every admin request that is not a read, refused ones too, as
one record of who asked (the operator's declared name, the client's address), what (method,
route template, the ids in the path), when, and the status answered.

Never a secret, token, code or request body: a record holds only the fields below, each
bounded. The operator's name comes from the `X-Operator` header the CLI sets from the OS user;
it is declared, not proven (every operator holds the same admin token), so it says who
claimed to act, and the client's address says from where.
"""

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics

log = logging.getLogger(__name__)

OPERATOR_HEADER = b"x-operator"
UNKNOWN = "unknown"
# Names an OS user can have; anything else is recorded as unknown, not stored as sent.
_OPERATOR = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
ID_MAX = 200


@dataclass(frozen=True)
class AdminAction:
    operator: str
    client: str
    method: str
    route: str  # the route's template, e.g. /admin/accounts/{account_id}/credit
    ids: dict[str, str]  # the path's parameters, e.g. {"account_id": "..."}
    status: int
    request_id: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def describe(self) -> str:
        ids = ", ".join(f"{k}={v}" for k, v in self.ids.items())
        return (
            f"{self.method} {self.route} ({ids or 'no ids'}) by {self.operator} from "
            f"{self.client} at {self.at.isoformat()}: {self.status} (request {self.request_id})"
        )


def operator_of(value: bytes | None) -> str:
    text = (value or b"").decode("latin-1").strip()
    return text if _OPERATOR.fullmatch(text) else UNKNOWN


class AdminAudit:
    """ASGI middleware that records each admin request (a path under /admin) that is not a
    read, through `record`, as its answer starts: once a client has the answer, its record
    is written. Outermost, so it sees every answer, the common middleware's refusals too. A
    record that cannot be written is logged whole (it holds nothing secret) and counted,
    and the answer goes out."""

    def __init__(
        self, app: ASGIApp, service: str, record: Callable[[AdminAction], Awaitable[None]]
    ) -> None:
        self.app = app
        self._record = record
        self._lost = metrics.ADMIN_AUDIT_LOST.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] in _READS
            or not (path == "/admin" or path.startswith("/admin/"))
        ):
            await self.app(scope, receive, send)
            return
        recorded = False

        async def send_recorded(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                await self._write(action_of(scope, message))
            await send(message)

        await self.app(scope, receive, send_recorded)

    async def _write(self, action: AdminAction) -> None:
        try:
            await self._record(action)
        except Exception as exc:
            self._lost.inc()
            log.error(
                "admin action not recorded in the audit (%s): %s",
                type(exc).__name__,
                action.describe(),
            )


def action_of(scope: Scope, answer: Message) -> AdminAction:
    """The record of a request from its scope (routed by now) and its answer's start."""
    route = getattr(scope.get("route"), "path", None)
    params = (scope.get("path_params") or {}) if route else {}
    headers = dict(scope["headers"])
    answered = dict(answer.get("headers", []))
    client = scope.get("client")
    return AdminAction(
        operator=operator_of(headers.get(OPERATOR_HEADER)),
        client=client[0][:64] if client else UNKNOWN,
        method=scope["method"][:16],
        route=(route or "unmatched")[:200],
        ids={str(k)[:64]: str(v)[:ID_MAX] for k, v in params.items()},
        status=answer["status"],
        request_id=answered.get(b"x-request-id", b"").decode("latin-1")[:64],
    )
