"""The HTTP conventions every service shares: error envelopes, request ids, bounded bodies,
health and metrics endpoints, and HTTP metrics."""

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared import metrics
from shared.db import database_unavailable
from shared.gc_pauses import flush_gc_pauses
from shared.logs import FailureReport, request_id_var

if TYPE_CHECKING:
    from shared.settings import CommonSettings

log = logging.getLogger(__name__)
Check = Callable[[], Awaitable[None]]


class NotReady(Exception):
    """A readiness check's failure whose message `/readyz` shows (it names no secret)."""


_REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")


class ApiError(Exception):
    """An error a client gets as `{"requestId", "error", "message", ...extra}`."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def request_id() -> str:
    rid = request_id_var.get()
    return rid if rid is not None else str(uuid.uuid4())


class ErrorDetail(BaseModel):
    field: str
    issue: str


class ErrorBody(BaseModel):
    """Every error answer: what was wrong and what to do. A 400 of invalid input names each
    field in `details`; a 409 duplicate adds `clientOrderNumber` and `transactionId`."""

    model_config = ConfigDict(extra="allow")

    requestId: str
    error: str
    message: str
    details: list[ErrorDetail] | None = None


_ERROR_MEANINGS = {
    400: "Invalid request (details[] names each field), or a rule of the operation refused it",
    401: "UNAUTHORIZED: credentials missing, malformed, unknown or expired",
    404: "Not found (or not yours)",
    409: "CLIENT_ORDER_NUMBER_DUPLICATE (orders), PIN_NOT_INTEGER (Get Codes: see pinFormat)",
    413: "PAYLOAD_TOO_LARGE: the body is over the limit",
    415: "UNSUPPORTED_MEDIA_TYPE: a body that is not JSON, or compressed",
    422: "UNSUPPORTED_CURRENCY",
    429: "RATE_LIMITED: retry after Retry-After seconds",
    500: "INTERNAL_ERROR: unexpected; the body's requestId is in the log",
    503: "SERVICE_UNAVAILABLE: retry after Retry-After seconds; nothing was charged",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, each with the one error body."""
    return {
        status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status]} for status in statuses
    }


def without_fastapi_422(schema: dict[str, Any]) -> dict[str, Any]:
    """Drops FastAPI's generated 422 (HTTPValidationError) from every operation: invalid input
    is our 400 INVALID_REQUEST, declared per operation with the body actually sent."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            ref = str(responses.get("422", {}).get("content", {}))
            if "HTTPValidationError" in ref:
                del responses["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, but a request it cannot parse (a malformed request line,
    a header it refuses) is answered with our error body and an x-request-id, like every other
    error, instead of uvicorn's plain-text "Invalid HTTP request received."."""

    def send_400_response(self, msg: str) -> None:
        rid = str(uuid.uuid4())
        body = json.dumps(
            {
                "requestId": rid,
                "error": "INVALID_REQUEST",
                "message": "The HTTP request could not be parsed (request line or headers): "
                "send a well-formed HTTP/1.1 request.",
            }
        ).encode()
        log.warning("unparsable HTTP request answered 400 (request id %s)", rid)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"x-request-id: " + rid.encode() + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def error_response(
    status: int,
    error: str,
    message: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"requestId": request_id(), "error": error, "message": message, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def ok(data: Any) -> dict[str, Any]:
    return {"requestId": request_id(), "data": data}


def paged(total: int, page: int, limit: int, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The pagination envelope of every listing: Get Orders, Get Products, the admin lists."""
    return {
        "total": total,
        "page": page,
        "pageSize": limit,
        "totalPage": math.ceil(total / limit),
        "items": items,
    }


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            details.append({"field": "body", "issue": "The body is not valid JSON."})
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        # The offending input is deliberately not echoed back.
        details.append({"field": ".".join(loc) or "body", "issue": str(err.get("msg", "invalid"))})
    return details


_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)
_NUL_ISSUE = "NUL characters are not allowed in any text: remove them."


def _nul_refusal(*fields: str) -> ApiError:
    """PostgreSQL refuses NUL in text, so no string of ours may hold one (a body's `\u0000`,
    a path's or query's `%00`): invalid input, refused before anything reads it."""
    return ApiError(
        400,
        "INVALID_REQUEST",
        "The request is not valid: see details for each field to fix.",
        extra={"details": [{"field": field, "issue": _NUL_ISSUE} for field in fields]},
    )


def _fields_with_nul(body: bytes) -> list[str]:
    """The dotted names of a JSON body's values (or keys) that hold a NUL; ["body"] when the
    body cannot be parsed (its parser will say more)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return ["body"]
    found: list[str] = []

    def walk(value: object, path: str) -> None:
        if isinstance(value, str):
            if "\x00" in value:
                found.append(path or "body")
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path else str(key)
                if "\x00" in str(key):
                    found.append(name)
                walk(item, name)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}.{index}" if path else str(index))

    walk(document, "")
    return found or ["body"]


def has_escaped_nul(body: bytes) -> bool:
    """Whether a JSON text holds `\u0000` as an escape (not an escaped backslash before
    `u0000`)."""
    return b"\\u" in body.lower() and _ESCAPED_NUL.search(body) is not None


_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]*\+)?json\s*(;.*)?$", re.IGNORECASE)
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


def _refused_headers(scope: Scope, values: Mapping[bytes, bytes]) -> JSONResponse | None:
    """Requests refused on their headers alone (`values`: the last of each name), before
    anything reads the body."""
    for where, raw in (("path", scope.get("raw_path") or b""), ("query", scope["query_string"])):
        if b"%00" in raw or b"\x00" in raw:
            refusal = _nul_refusal(where)
            return error_response(refusal.status, refusal.error, refusal.message, refusal.extra)
    credentials = [name for name, _ in scope["headers"] if name in _CREDENTIAL_HEADERS]
    if len(credentials) != len(set(credentials)):
        return error_response(
            401, "UNAUTHORIZED", "Send each credential header (Authorization, x-api-key) once."
        )
    if scope.get("method") not in _BODY_METHODS:
        return None
    encoding = values.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"", b"identity"):
        return error_response(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Compressed request bodies are not accepted: send the body without Content-Encoding.",
        )
    content_type = values.get(b"content-type", b"").decode("latin-1").strip()
    if content_type and not _JSON_TYPE.match(content_type):
        return error_response(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Request bodies are JSON: send Content-Type: application/json.",
        )
    return None


class CommonMiddleware:
    """Request ids, body size bound, and HTTP metrics, as one plain ASGI middleware."""

    def __init__(self, app: ASGIApp, service: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_rid = headers.get(b"x-request-id", b"").decode("latin-1")
        token = request_id_var.set(raw_rid if _REQUEST_ID.match(raw_rid) else str(uuid.uuid4()))
        started = time.perf_counter()
        status_holder = [500]
        response_started = [False]

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id_var.get().encode()))  # type: ignore[union-attr]
                message["headers"] = headers
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            response = error_response(
                413,
                "PAYLOAD_TOO_LARGE",
                f"The request body exceeds {self.max_body} bytes; send a smaller body.",
            )
            await response(scope, receive, send_with_status)
            self._observe(scope, 413, started)
            request_id_var.reset(token)
            return

        refused = _refused_headers(scope, headers)
        if refused is not None:
            await refused(scope, receive, send_with_status)
            self._observe(scope, refused.status_code, started)
            request_id_var.reset(token)
            return

        received = 0
        chunks: list[bytes] = []

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body:
                    raise ApiError(
                        413,
                        "PAYLOAD_TOO_LARGE",
                        f"The request body exceeds {self.max_body} bytes; send a smaller body.",
                    )
                # Bodies are read whole before they are parsed, so the check of the complete
                # body comes before anything uses it.
                chunks.append(chunk)
                if not message.get("more_body", False):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    chunks.clear()
                    if has_escaped_nul(body):
                        raise _nul_refusal(*_fields_with_nul(body))
            return message

        try:
            await self.app(scope, bounded_receive, send_with_status)
        except Exception as exc:
            # Answered here, where the request's id is still known: the body, its
            # x-request-id header and the log line all carry the same id.
            unavailable = database_unavailable(exc)
            if unavailable is not None:
                # The type and SQLSTATE only: a server message's DETAIL can hold row values.
                logging.getLogger(self.service).warning(
                    "database unavailable (%s%s): answering 503",
                    type(unavailable).__name__,
                    f", SQLSTATE {getattr(unavailable, 'sqlstate', None)}"
                    if getattr(unavailable, "sqlstate", None)
                    else "",
                )
            else:
                logging.getLogger(self.service).exception("unexpected error answering a request")
            if response_started[0]:
                raise
            if unavailable is not None:
                status_holder[0] = 503
                response = error_response(
                    503,
                    "SERVICE_UNAVAILABLE",
                    "The service cannot reach its database right now. Retry after the delay "
                    "given (with enableClientOrderNumberDupCheck, a retried order is never "
                    "placed twice).",
                    headers={"Retry-After": "1"},
                )
            else:
                status_holder[0] = 500
                response = error_response(
                    500,
                    "INTERNAL_ERROR",
                    "Something went wrong on our side. Retry later; quote the requestId if it "
                    "persists.",
                )
            await response(scope, receive, send_with_status)
        finally:
            self._observe(scope, status_holder[0], started)
            request_id_var.reset(token)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        metrics.HTTP_REQUESTS.labels(self.service, path, method, str(status)).inc()
        metrics.HTTP_LATENCY.labels(self.service, path, method).observe(
            time.perf_counter() - started
        )
        flush_gc_pauses()  # so that every process's pauses reach /metrics (shared.gc_pauses)


HotEndpoint = Callable[[Request], Awaitable[Response]]
"""A hot route's endpoint, as a Starlette endpoint: it answers a Response, or raises what a
route may raise (ApiError, RequestValidationError), which is answered as the app's exception
handlers would."""


class HotRoutes(FastAPI):
    """A FastAPI app that answers a few routes (`install_common(hot_routes=...)`) by calling
    their endpoints directly inside the common middleware: no Starlette routing or exception
    middleware, no FastAPI dependency solving. On the instant-order path these cost more of
    the api's CPU than parsing, authenticating and placing the order together
    (docs/benchmarks.md). Such a route is declared on the app as well, with the same
    endpoint: the OpenAPI document shows it, and a request the hot table does not match
    (another method) is answered by the router as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot: dict[tuple[str, str], ASGIApp] = {}

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        # A middleware added once hot routes are installed would silently not see them.
        if self.hot:
            raise TypeError(
                f"{getattr(middleware_class, '__name__', middleware_class)} would not wrap the "
                "hot routes: add middleware before install_common installs them"
            )
        super().add_middleware(middleware_class, *args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hot = self.hot.get((scope["method"], _route_path(scope)))
            if hot is not None:
                scope["app"] = self
                await hot(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: the request's, less the app's root_path if it is mounted
    under one."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


class _HotRoute:
    """One hot route: labels the request with its path (the HTTP metrics' `path`), and
    answers the endpoint's errors as the app's exception handlers do."""

    def __init__(self, path: str, endpoint: HotEndpoint) -> None:
        self.path = path  # read as scope["route"].path, as of a routed request's route
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        try:
            response = await self.endpoint(Request(scope, receive))
        except ApiError as exc:
            response = api_error_response(exc)
        except RequestValidationError as exc:
            response = invalid_request_response(exc)
        await response(scope, receive, send)


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.message, exc.extra, exc.headers)


def invalid_request_response(exc: RequestValidationError) -> JSONResponse:
    return error_response(
        400,
        "INVALID_REQUEST",
        "The request is not valid: see details for each field to fix.",
        {"details": _validation_details(exc)},
    )


class OnScrape:
    """Gauges read from elsewhere (the database, the broker) when /metrics is scraped, not on
    a timer: an idle service then does nothing between scrapes, and a scrape reads values of
    that moment rather than up to one period old.

    A scrape starts `step` unless the last one ended less than `fresh_for_s` ago (scrapes of
    several Prometheus servers, or of one process's two listeners, share it), and waits for
    it at most `wait_s`: a step that takes longer goes on, and the scrape answers with the
    values as they are (the next scrape sees what it set). Concurrent scrapes share one
    step. A failing step is logged once, with its error's type, and again when it works."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        *,
        fresh_for_s: float = 1.0,
        wait_s: float = 2.0,
    ) -> None:
        self.name = name
        self._step = step
        self._fresh_for_s = fresh_for_s
        self._wait_s = wait_s
        self._ended = -math.inf
        self._running: asyncio.Task[None] | None = None
        self._report = FailureReport(log, name, "tried again at the next scrape")

    async def scraped(self) -> None:
        if self._running is None:
            if time.monotonic() - self._ended < self._fresh_for_s:
                return
            self._running = asyncio.create_task(self._run(), name=f"on-scrape {self.name}")
        await asyncio.wait({self._running}, timeout=self._wait_s)

    async def _run(self) -> None:
        try:
            await self._step()
            self._report.worked()
        except Exception as exc:
            self._report.failed(exc)
        finally:
            self._ended = time.monotonic()
            if self._running is asyncio.current_task():  # not one a later scrape started
                self._running = None

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def install_common(
    app: FastAPI,
    service: str,
    readiness: Mapping[str, Check],
    *,
    max_body_bytes: int = 1024 * 1024,
    live_collectors: Sequence[Collector] = (),
    on_scrape: Sequence[OnScrape] = (),
    serve_metrics: bool = True,
    hot_routes: Sequence[tuple[str, str, HotEndpoint]] = (),
) -> None:
    """Error bodies, the common middleware, /healthz, /readyz and (with `serve_metrics`)
    /metrics. `live_collectors` are read at each scrape from the answering process (not
    merged from metric files); `on_scrape` refreshes gauges before each scrape. `hot_routes`
    (method, path, endpoint) are answered by `HotRoutes` (the app must be one), inside the
    same common middleware."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_request_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):  # e.g. a chunked body over the limit
            return api_error_response(exc.__cause__)
        if exc.status_code == 400:  # FastAPI could not read the body (nesting, encoding)
            return error_response(
                400,
                "INVALID_REQUEST",
                "The request is not valid: the body could not be read as JSON.",
                {"details": [{"field": "body", "issue": "The body is not valid JSON."}]},
            )
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        code = codes.get(exc.status_code, "HTTP_ERROR")
        message = {
            404: "No such endpoint: check the path against the API reference.",
            405: "This method is not allowed on this endpoint.",
        }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, headers=exc.headers)

    # A redirect to the path with(out) its trailing slash would build its Location from the
    # Host header the client sent: such paths are 404 instead.
    app.router.redirect_slashes = False

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        failures: dict[str, str] = {}
        for name, check in readiness.items():
            try:
                await check()
            except NotReady as exc:
                failures[name] = str(exc)
            except Exception as exc:
                failures[name] = type(exc).__name__
        if failures:
            return JSONResponse(
                {"status": "not ready", "service": service, "failing": failures}, status_code=503
            )
        return JSONResponse({"status": "ready", "service": service})

    if serve_metrics:
        _install_metrics(app, live_collectors, on_scrape)
    app.add_middleware(CommonMiddleware, service=service, max_body_bytes=max_body_bytes)
    if hot_routes:
        if not isinstance(app, HotRoutes):
            raise TypeError("hot routes need a HotRoutes app")
        for method, path, endpoint in hot_routes:
            app.hot[(method, path)] = CommonMiddleware(
                _HotRoute(path, endpoint), service=service, max_body_bytes=max_body_bytes
            )


def _install_metrics(
    app: FastAPI, live_collectors: Sequence[Collector], on_scrape: Sequence[OnScrape]
) -> None:
    registry = metrics.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # One of several worker processes: any of them answers for all (see shared.runtime).
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for collector in live_collectors:
        with contextlib.suppress(ValueError):  # already in the default registry (a 2nd app)
            registry.register(collector)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        if on_scrape:
            await asyncio.gather(*(refresh.scraped() for refresh in on_scrape))
        flush_gc_pauses()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class AdminGuard:
    """The admin credential of one service, and what its failures cost: each failed check is
    logged (the client's address, the method and path; never what was presented) and counted
    (`admin_auth_failures_total`); an address with `max_failures` failures within the last
    `window_s` is answered 429 RATE_LIMITED, before its credential is even compared, until
    the oldest of them is older than the window. A success does not forgive earlier failures
    of its address (operators on one host would otherwise reset an attacker's count there).
    Kept in this process's memory, like the per-account rate limit: with several worker
    processes, each counts the connections it was given."""

    MAX_ADDRESSES = 10_000  # the addresses remembered; past it the quietest is forgotten

    def __init__(
        self,
        service: str,
        token: SecretStr,
        max_failures: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expected = token.get_secret_value().encode()
        self._max, self._window, self._clock = max_failures, window_s, clock
        # address -> (times of its failures within the window, its throttling was logged)
        self._failures: OrderedDict[str, tuple[deque[float], bool]] = OrderedDict()
        self._counted = {
            reason: metrics.ADMIN_AUTH_FAILURES.labels(service, reason)
            for reason in ("missing", "invalid", "throttled")
        }

    @classmethod
    def from_settings(cls, service: str, settings: "CommonSettings") -> "AdminGuard":
        return cls(
            service,
            settings.admin_token,
            settings.admin_auth_max_failures,
            settings.admin_auth_window_s,
        )

    def check(self, client: str, method: str, path: str, authorization: str | None) -> None:
        """Returns if `authorization` is `Bearer <the admin token>`; raises ApiError 401 (or
        429 while `client` is throttled) otherwise."""
        now = self._clock()
        failures, told = self._failures.get(client, (deque[float](), False))
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if len(failures) >= self._max:
            wait = failures[0] + self._window - now
            self._counted["throttled"].inc()
            if not told:  # once a bout: a flood of refusals does not flood the log
                log.warning(
                    "admin requests from %s refused for %.0fs: %d failed authentications "
                    "within %.0fs (this one: %s %s); refusals are counted, not logged, until then",
                    client, wait, len(failures), self._window, method, path[:200],
                )  # fmt: skip
                self._remember(client, failures, told=True)
            raise ApiError(
                429,
                "RATE_LIMITED",
                "Too many failed admin authentications from your address: retry after the "
                "delay given, with the right admin token.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        if presented and hmac.compare_digest(presented, self._expected):
            return
        reason = "invalid" if presented else "missing"
        self._counted[reason].inc()
        failures.append(now)
        self._remember(client, failures, told=False)
        log.warning(
            "admin authentication failed (%s credential) for %s %s from %s",
            reason, method, path[:200], client,
        )  # fmt: skip
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "Admin endpoints need 'Authorization: Bearer <ADMIN_TOKEN>' with the stack's admin "
            "token (the CLI reads it from the environment or the local stack's secrets).",
        )

    def _remember(self, client: str, failures: deque[float], *, told: bool) -> None:
        self._failures[client] = (failures, told)
        self._failures.move_to_end(client)
        while len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)


async def admin_only(
    request: Request, authorization: Annotated[str | None, Header(max_length=300)] = None
) -> None:
    """The dependency of every service's admin router; the app keeps its AdminGuard in
    `app.state.admin_guard`. (async: a plain `def` would run in a worker thread.)"""
    guard: AdminGuard = request.app.state.admin_guard
    client = request.client.host if request.client else "unknown"
    guard.check(client, request.method, request.url.path, authorization)
